//===- OperandAccess.cuh - F32 or BF16 operands in device code -*- CUDA -*-===//
//
// Loads and stores of F32 or BF16 values, computed in FP32 and rounded to
// BF16 on store where the result is BF16: typed, for kernels that know the
// element type when compiled (a latent cache's rows, PagedCache.cuh), and
// through Operand / Result, for the generic kernels (Elementwise.h) that
// know it only at run time.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_OPERANDACCESS_CUH
#define MELT_RUNTIME_CUDA_OPERANDACCESS_CUH

#include "cuda/Elementwise.h"

#include <cuda_bf16.h>

#include <cstdint>

namespace melt::rt::cuda {

__device__ __forceinline__ float loadValue(const float *p, size_t i) {
  return p[i];
}
__device__ __forceinline__ float loadValue(const __nv_bfloat16 *p, size_t i) {
  return __bfloat162float(p[i]);
}

__device__ __forceinline__ void storeValue(float *p, size_t i, float v) {
  p[i] = v;
}
__device__ __forceinline__ void storeValue(__nv_bfloat16 *p, size_t i,
                                           float v) {
  p[i] = __float2bfloat16(v);
}

/// Values i .. i + 3 (i a multiple of 4, p aligned to 4 of its elements:
/// vectorizable): one 16-byte load of F32, one 8-byte of BF16.
__device__ __forceinline__ float4 loadValues4(const float *p, size_t i) {
  return *reinterpret_cast<const float4 *>(p + i);
}
/// Four BF16 values as loaded (8 bytes) in F32.
__device__ __forceinline__ float4 bf16Four(uint2 raw) {
  const float2 lo =
      __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&raw.x));
  const float2 hi =
      __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&raw.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}
__device__ __forceinline__ float4 loadValues4(const __nv_bfloat16 *p,
                                              size_t i) {
  return bf16Four(*reinterpret_cast<const uint2 *>(p + i));
}

__device__ __forceinline__ float load(Operand o, size_t i) {
  return o.bf16 ? loadValue(static_cast<const __nv_bfloat16 *>(o.data), i)
                : loadValue(static_cast<const float *>(o.data), i);
}

__device__ __forceinline__ void store(Result r, size_t i, float v) {
  if (r.bf16)
    storeValue(static_cast<__nv_bfloat16 *>(r.data), i, v);
  else
    storeValue(static_cast<float *>(r.data), i, v);
}

/// loadValues4 of an operand of either type.
__device__ __forceinline__ float4 load4(Operand o, size_t i) {
  return o.bf16 ? loadValues4(static_cast<const __nv_bfloat16 *>(o.data), i)
                : loadValues4(static_cast<const float *>(o.data), i);
}

/// store() of four values at once, rounded the same way.
__device__ __forceinline__ void store4(Result r, size_t i, float4 v) {
  if (r.bf16) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y),
                         hi = __floats2bfloat162_rn(v.z, v.w);
    uint2 raw;
    raw.x = *reinterpret_cast<const uint32_t *>(&lo);
    raw.y = *reinterpret_cast<const uint32_t *>(&hi);
    *reinterpret_cast<uint2 *>(static_cast<__nv_bfloat16 *>(r.data) + i) = raw;
  } else {
    *reinterpret_cast<float4 *>(static_cast<float *>(r.data) + i) = v;
  }
}

/// Whether a pointer suits load4 / store4 (4 elements' alignment).
__host__ __device__ inline bool alignedFor4(const void *p, bool bf16) {
  return reinterpret_cast<uintptr_t>(p) % (bf16 ? 8 : 16) == 0;
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_OPERANDACCESS_CUH
