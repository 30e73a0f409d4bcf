//===- BlockQuantize.cuh - 1 x 128 FP8 activation blocks in device code ---===//
//
// The arithmetic of melt's activation quantization, in one place for the
// kernels that quantize: their values must agree bit for bit (the executor
// folds one into the other). The model's quantize op (quantizeBlocks:
// scale = max(amax, 1e-12) / 448 per block, codes = e4m3(v / scale),
// saturated), for the quantize kernels and the FP8 experts that quantize
// their input as they stage it; and the FP8 GEMMs' input
// (quantizeRowsFp8: scale = amax / 448, 1 for an all-zero block, codes =
// e4m3(v * (1 / scale))), for its kernel and the small-M GEMMs that
// quantize their F32 input themselves.
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

/// The largest magnitude of a 128-value block whose values the warp's lanes
/// hold four each (all lanes take part).
__device__ __forceinline__ float warpAbsMax(float4 v) {
  return warpMax(
      fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
}

/// The scale of such a block.
__device__ __forceinline__ float warpBlockScale(float4 v) {
  return blockScale(warpAbsMax(v));
}

/// The e4m3 code of v in a block of `scale`.
__device__ __forceinline__ uint32_t e4m3Code(float v, float scale) {
  return __nv_cvt_float_to_fp8(v / scale, __NV_SATFINITE, __NV_E4M3);
}

/// quantizeRowsFp8's scale of a block from its largest magnitude (an
/// all-zero block keeps scale 1: any scale would do; 0 would not).
__device__ __forceinline__ float gemmInputScale(float amax) {
  return amax > 0.f ? amax / 448.f : 1.f;
}

/// quantizeRowsFp8's codes of four values, low byte first, in a block of
/// scale 1 / `inverse`: two conversions of a pair each (the same codes as
/// four of one value: the same instruction and rounding).
__device__ __forceinline__ uint32_t gemmInputCodes(float a, float b, float c,
                                                   float d, float inverse) {
  const uint32_t low = __nv_cvt_float2_to_fp8x2(
                     make_float2(a * inverse, b * inverse), __NV_SATFINITE,
                     __NV_E4M3),
                 high = __nv_cvt_float2_to_fp8x2(
                     make_float2(c * inverse, d * inverse), __NV_SATFINITE,
                     __NV_E4M3);
  return low | high << 16;
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_BLOCKQUANTIZE_CUH
