//===- Silu.cuh - SiLU(gate) * up, one expression for all -*- C++ -*-===//
//
// The elementwise SiLU-mul and the kernels that fold it into their loads
// (the FP8 products' quantization) compute it alike, so that fused and
// unfused paths give the same values bit for bit.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_SILU_CUH
#define MELT_RUNTIME_CUDA_SILU_CUH

namespace melt::rt::cuda {

__device__ __forceinline__ float siluTimes(float gate, float up) {
  return gate / (1.f + __expf(-gate)) * up;
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_SILU_CUH
