//===- PagedCache.cuh - cache rows of paged positions (CUDA) ---*- CUDA -*-===//
#ifndef MELT_RUNTIME_CUDA_PAGEDCACHE_CUH
#define MELT_RUNTIME_CUDA_PAGEDCACHE_CUH

#include "cuda/ModelKernels.h"

namespace melt::rt::cuda {

/// The cache row of `position` of sequence b, or -1 without a page.
__device__ __forceinline__ int cacheRow(const PagedLayout &c, int b,
                                        int position) {
  int slot = position / kPageRows;
  if (b < 0 || b >= c.batch || position < 0 || slot >= c.perSequence)
    return -1;
  int page = c.pages[b * c.perSequence + slot];
  int row = page * kPageRows + position % kPageRows;
  return page < 0 || row >= c.rows ? -1 : row;
}

// A latent cache's values are F32 or BF16 (Device::latentCacheType): kernels
// that read or write one take its element type as a template parameter and
// go through these.

/// Value i of a cache row, as F32.
__device__ __forceinline__ float cacheValue(const float *row, int i) {
  return row[i];
}
__device__ __forceinline__ float cacheValue(const __nv_bfloat16 *row, int i) {
  return __bfloat162float(row[i]);
}

/// Values [4 i, 4 i + 4) of a cache row (16-byte aligned F32 rows, 8-byte
/// aligned BF16 ones), as F32.
__device__ __forceinline__ float4 cacheValues4(const float *row, int i) {
  return reinterpret_cast<const float4 *>(row)[i];
}
__device__ __forceinline__ float4 cacheValues4(const __nv_bfloat16 *row,
                                               int i) {
  const uint2 bits = reinterpret_cast<const uint2 *>(row)[i];
  const float2 lo =
      __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&bits.x));
  const float2 hi =
      __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&bits.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

/// Writes value i of a cache row (rounded to nearest for BF16).
__device__ __forceinline__ void storeCacheValue(float *row, int i, float v) {
  row[i] = v;
}
__device__ __forceinline__ void storeCacheValue(__nv_bfloat16 *row, int i,
                                                float v) {
  row[i] = __float2bfloat16(v);
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_PAGEDCACHE_CUH
