//===- Exp2.cuh - 2^x of the attention kernels' softmax ----*- C++ -*-===//
//
// The attention and MLA kernels weigh each score by 2^(s - max) (the
// scale folded into log2(e) units). exp2f compiles to ex2.approx.f32,
// which keeps subnormal results: a compare and two multiplies around the
// MUFU instruction for every score. The flush-to-zero form runs alone:
// the same approximation, weights below 2^-126 of the row's largest
// flushed to 0 (they add nothing to a sum of at least 1). Measured on the
// H200 (session 49, bench/results/session49_h200/call2-log.txt,
// melt-bench-causal-attention, two builds alternating): the wgmma causal
// attention 8x1024 at 16 heads 188.8 / 187.6 -> 180.5 / 182.5 us, 1x4096
// 227 -> 213. The build option MELT_CUDA_EXP2_IEEE
// (-DCMAKE_CUDA_FLAGS=-DMELT_CUDA_EXP2_IEEE) takes exp2f back.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_EXP2_CUH
#define MELT_RUNTIME_CUDA_EXP2_CUH

namespace melt::rt::cuda {

/// 2^x of a softmax weight: ex2.approx.ftz.f32 alone (exp2f with
/// MELT_CUDA_EXP2_IEEE).
__device__ __forceinline__ float softmaxExp2(float x) {
#ifdef MELT_CUDA_EXP2_IEEE
  return exp2f(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_EXP2_CUH
