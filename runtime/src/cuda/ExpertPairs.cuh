//===- ExpertPairs.cuh - a (token, choice) pair's expert -------*- CUDA -*-===//
//
// The row-by-row expert kernels run a block row per (token, choice) pair.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_EXPERTPAIRS_CUH
#define MELT_RUNTIME_CUDA_EXPERTPAIRS_CUH

#include <cstdint>

namespace melt::rt::cuda {

/// The expert this block's pair (blockIdx.x) chose, or -1 where the id is
/// out of range: then the first block of the pair sets *bad (the pair is
/// skipped).
__device__ __forceinline__ int expertOfPair(const int32_t *indices, int experts,
                                            int32_t *bad) {
  const int e = indices[blockIdx.x];
  if (e >= 0 && e < experts)
    return e;
  if (threadIdx.x == 0 && blockIdx.y == 0)
    *bad = 1;
  return -1;
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_EXPERTPAIRS_CUH
