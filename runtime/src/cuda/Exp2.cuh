//===- Exp2.cuh - 2^x of the attention kernels' softmax ----*- C++ -*-===//
//
// The attention and MLA kernels weigh each score by 2^(s - max) (the
// scale folded into log2(e) units). exp2f compiles to ex2.approx.f32,
// which keeps subnormal results: a compare and two multiplies around the
// MUFU instruction for every score. Behind the build option
// MELT_CUDA_EXP2_FTZ (-DCMAKE_CUDA_FLAGS=-DMELT_CUDA_EXP2_FTZ; not yet
// measured on a GPU, so not the default) the flush-to-zero form runs
// alone: the same approximation, weights below 2^-126 of the row's
// largest flushed to 0.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_EXP2_CUH
#define MELT_RUNTIME_CUDA_EXP2_CUH

namespace melt::rt::cuda {

/// 2^x by ex2.approx.ftz.f32 alone (what the build options use: here and
/// SiLU's exponential, Silu.cuh).
__device__ __forceinline__ float exp2Ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float softmaxExp2(float x) {
#ifdef MELT_CUDA_EXP2_FTZ
  return exp2Ftz(x);
#else
  return exp2f(x);
#endif
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_EXP2_CUH
