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

/// The division as a multiplication by the approximate reciprocal
/// (__fdividef, within 2 ulp; 0 where 1 + e^-gate overflows, for gate
/// below about -87, where SiLU is 0 to F32's precision): IEEE division is
/// a subroutine of some ten instructions with a slow path, and the grouped
/// gate/up pairs' epilogues run it for every element of a tile while the
/// tensor cores wait. Measured on the H200 (session 48,
/// bench/results/session48_h200/call3-silu-divide-ab.txt): the FP8 pair
/// on tensor cores 836 -> 718 us at mini's 8192 tokens, 5.5 -> 4.9 ms at
/// DeepSeek-V3's; mini's FP8 8x1024 prefill +5-7%.
/// (The exponential and the division in their flush-to-zero forms, about
/// 9 -> 5 instructions a SiLU, measured no faster in session 49: the
/// grouped BF16 pair 1011 / 1019 against 1013 / 1020 us,
/// bench/results/session49_h200/call2-log.txt.)
__device__ __forceinline__ float siluTimes(float gate, float up) {
  return __fdividef(gate, 1.f + __expf(-gate)) * up;
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
