//===- BlockQuantize.cuh - 1 x 128 FP8 activation blocks in device code ---===//
//
// The arithmetic of melt's activation quantization (quantizeBlocks: scale =
// max(amax, 1e-12) / 448 per block, codes = e4m3(v / scale), saturated), in
// one place for the kernels that quantize: the quantize kernels and the
// FP8 experts that quantize their input as they stage it. Their values
// must agree bit for bit (the executor folds one into the other).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_BLOCKQUANTIZE_CUH
#define MELT_RUNTIME_CUDA_BLOCKQUANTIZE_CUH

#include "cuda/WarpReduce.cuh"

#include <cuda_fp8.h>

#include <cstdint>

namespace melt::rt::cuda {

/// A block's scale from its largest magnitude.
__device__ __forceinline__ float blockScale(float amax) {
  return fmaxf(amax, 1e-12f) / 448.f;
}

/// The scale of a 128-value block whose values the warp's lanes hold four
/// each (all lanes take part).
__device__ __forceinline__ float warpBlockScale(float4 v) {
  return blockScale(warpMax(
      fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)))));
}

/// The e4m3 code of v in a block of `scale`.
__device__ __forceinline__ uint32_t e4m3Code(float v, float scale) {
  return __nv_cvt_float_to_fp8(v / scale, __NV_SATFINITE, __NV_E4M3);
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_BLOCKQUANTIZE_CUH
