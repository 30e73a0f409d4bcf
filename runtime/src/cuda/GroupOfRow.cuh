//===- GroupOfRow.cuh - the group a grouped row is in ----------*- CUDA -*-===//
//
// The grouped products (GroupedGemm.cu, GroupedGemmFp8.cu) take every
// expert's rows in one launch: a block finds its expert from the group
// starts on the device (ExpertGrouping.h).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_GROUPOFROW_CUH
#define MELT_RUNTIME_CUDA_GROUPOFROW_CUH

#include <cstdint>

namespace melt::rt::cuda {

/// The group whose rows hold `row` (below starts[groups]): the last e with
/// starts[e] <= row (groups without rows share their start with the next).
__device__ __forceinline__ int groupOfRow(const int32_t *starts, int groups,
                                          int row) {
  int lo = 0, hi = groups - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (starts[mid] <= row)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_GROUPOFROW_CUH
