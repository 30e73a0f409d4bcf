//===- Silu.cuh - SiLU(gate) * up, one expression for all -*- C++ -*-===//
//
// The elementwise SiLU-mul and the kernels that fold it into their loads
// (the FP8 products' quantization) compute it alike, so that fused and
// unfused paths give the same values bit for bit.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_SILU_CUH
#define MELT_RUNTIME_CUDA_SILU_CUH

#include "cuda/Exp2.cuh"

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
/// With MELT_CUDA_SILU_FTZ (a build option, -DCMAKE_CUDA_FLAGS=
/// -DMELT_CUDA_SILU_FTZ; not yet measured on a GPU), the exponential and
/// the division in their flush-to-zero forms (ex2/div.approx.ftz): the
/// same products of log2(e), the same approximations, without the
/// instructions that keep subnormal inputs and results (about 9 -> 5 a
/// SiLU in sm_90a machine code, from the size of a test kernel's text
/// beside the same kernel's with gate * up), which change nothing here but
/// a subnormal gate's SiLU (0 where it was subnormal).
__device__ __forceinline__ float siluTimes(float gate, float up) {
#ifdef MELT_CUDA_SILU_FTZ
  const float e = exp2Ftz(gate * -1.4426950408889634f); // e^-gate
  float quotient;
  asm("div.approx.ftz.f32 %0, %1, %2;"
      : "=f"(quotient)
      : "f"(gate), "f"(1.f + e));
  return quotient * up;
#else
  return __fdividef(gate, 1.f + __expf(-gate)) * up;
#endif
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
