//===- Silu.cuh - SiLU(gate) * up, one expression for all -*- C++ -*-===//
//
// The elementwise SiLU-mul and the kernels that fold it into their loads
// (the FP8 products' quantization) compute it alike, so that fused and
// unfused paths give the same values bit for bit.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_SILU_CUH
#define MELT_RUNTIME_CUDA_SILU_CUH

#include <cuda_bf16.h>

namespace melt::rt::cuda {

__device__ __forceinline__ float siluTimes(float gate, float up) {
  return gate / (1.f + __expf(-gate)) * up;
}

/// The same of two F32 products each rounded to BF16 first: what the
/// products' BF16 outputs and then the elementwise SiLU-mul give (the
/// grouped gate/up pairs).
__device__ __forceinline__ float siluTimesOfBf16(float gate, float up) {
  return siluTimes(__bfloat162float(__float2bfloat16(gate)),
                   __bfloat162float(__float2bfloat16(up)));
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_SILU_CUH
