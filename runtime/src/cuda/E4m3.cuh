//===- E4m3.cuh - FP8 e4m3 codes widened in device code --------*- CUDA -*-===//
//
// Through the hardware's e4m3 -> FP16 conversion, exact: every e4m3 value
// (subnormals too) is a normal FP16 or zero.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_E4M3_CUH
#define MELT_RUNTIME_CUDA_E4M3_CUH

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace melt::rt::cuda {

/// The FP16 pair (low half first) of the two e4m3 codes in the low 16 bits
/// of `codes`: an mma.sync FP16 operand.
__device__ __forceinline__ uint32_t e4m3PairAsHalves(uint32_t codes) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(
      static_cast<__nv_fp8x2_storage_t>(codes & 0xffffu), __NV_E4M3);
  return uint32_t(h.x) | (uint32_t(h.y) << 16);
}

/// The value of the e4m3 code in the low byte of `code`.
__device__ __forceinline__ float e4m3Value(uint32_t code) {
  __half_raw h = __nv_cvt_fp8_to_halfraw(
      static_cast<__nv_fp8_storage_t>(code & 0xffu), __NV_E4M3);
  return __half2float(__half(h));
}

/// The values of the four e4m3 codes of a word, low byte first (two codes
/// per conversion instruction).
__device__ __forceinline__ void e4m3Values(uint32_t codes, float (&out)[4]) {
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const __half2 pair(__nv_cvt_fp8x2_to_halfraw2(
        static_cast<__nv_fp8x2_storage_t>((codes >> (16 * j)) & 0xffffu),
        __NV_E4M3));
    const float2 values = __half22float2(pair);
    out[2 * j] = values.x;
    out[2 * j + 1] = values.y;
  }
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_E4M3_CUH
