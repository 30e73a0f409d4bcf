//===- PagedCache.cuh - cache rows of paged positions (CUDA) ---*- CUDA -*-===//
#ifndef MELT_RUNTIME_CUDA_PAGEDCACHE_CUH
#define MELT_RUNTIME_CUDA_PAGEDCACHE_CUH

#include "cuda/ModelKernels.h"
#include "cuda/OperandAccess.cuh" // a latent cache's F32 or BF16 rows

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

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_PAGEDCACHE_CUH
