//===- ExpertGrouping.cu - expert choices grouped on the GPU --------------===//
//
// Two kernels. The first (one block) counts each expert's pairs in shared
// memory and writes the group starts. The second (a block per expert, and
// one more for the rows past the last group) walks the pairs in order,
// 1024 at a time: each warp's matches are ranked by a ballot, the warps'
// counts added in warp order, so that a pair's row is its rank among its
// expert's pairs, the same every run.
//
//===----------------------------------------------------------------------===//
#include "cuda/ExpertGrouping.h"

#include "cuda/DependentLaunch.cuh"

namespace melt::rt::cuda {
namespace {

constexpr int kThreads = 1024, kWarps = kThreads / 32;

__global__ void __launch_bounds__(kThreads)
    countGroupsKernel(ExpertGroupingArgs a) {
  awaitPriorKernels();
  __shared__ int counts[kMaxGroupedExperts];
  for (int e = threadIdx.x; e < a.experts; e += kThreads)
    counts[e] = 0;
  __syncthreads();
  const int pairs = a.tokens * a.topK;
  for (int p = threadIdx.x; p < pairs; p += kThreads) {
    const int e = a.chosen[p];
    if (e >= 0 && e < a.experts)
      atomicAdd(&counts[e], 1);
    else
      *a.bad = 1;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int start = 0;
    for (int e = 0; e < a.experts; ++e) {
      a.starts[e] = start;
      start += (counts[e] + kExpertGroupRows - 1) / kExpertGroupRows *
               kExpertGroupRows;
    }
    a.starts[a.experts] = start;
  }
}

__global__ void __launch_bounds__(kThreads)
    assignRowsKernel(ExpertGroupingArgs a) {
  awaitPriorKernels();
  const int e = blockIdx.x;
  if (e == a.experts) { // the rows past the last group
    for (int r = a.starts[a.experts] + threadIdx.x; r < a.capacity;
         r += kThreads)
      a.tokenOfRow[r] = 0;
    return;
  }
  __shared__ int warpCounts[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int pairs = a.tokens * a.topK, base = a.starts[e];
  int taken = 0; // this expert's pairs before the current 1024
  for (int first = 0; first < pairs; first += kThreads) {
    const int p = first + threadIdx.x;
    const int chosen = p < pairs ? a.chosen[p] : -1;
    const bool mine = chosen == e;
    if (e == 0 && p < pairs && (chosen < 0 || chosen >= a.experts))
      a.rowOfPair[p] = -1; // counted as bad by the first kernel
    const unsigned matches = __ballot_sync(0xffffffffu, mine);
    if (lane == 0)
      warpCounts[warp] = __popc(matches);
    __syncthreads();
    int before = taken;
    for (int w = 0; w < warp; ++w)
      before += warpCounts[w];
    if (mine) {
      const int row = base + before + __popc(matches & ((1u << lane) - 1u));
      a.rowOfPair[p] = row;
      a.tokenOfRow[row] = p / a.topK;
    }
    int all = 0;
    for (int w = 0; w < kWarps; ++w)
      all += warpCounts[w];
    taken += all;
    __syncthreads(); // warpCounts is written again
  }
  // The group's padding rows.
  for (int r = base + taken + threadIdx.x; r < a.starts[e + 1]; r += kThreads)
    a.tokenOfRow[r] = 0;
}

} // namespace

int expertGroupingCapacity(int pairs, int experts) {
  // Every group padded by at most 127 rows; the total in whole tiles.
  const long long rows =
      (long long)pairs + (long long)experts * (kExpertGroupRows - 1);
  return int((rows + kExpertGroupRows - 1) / kExpertGroupRows *
             kExpertGroupRows);
}

cudaError_t groupExperts(const ExpertGroupingArgs &a, cudaStream_t stream) {
  if (!a.chosen || !a.starts || !a.rowOfPair || !a.tokenOfRow || !a.bad ||
      a.tokens < 0 || a.topK <= 0 || a.experts <= 0 ||
      a.experts > kMaxGroupedExperts ||
      a.capacity < expertGroupingCapacity(a.tokens * a.topK, a.experts))
    return cudaErrorInvalidValue;
  cudaError_t error =
      launchOverlapped(countGroupsKernel, 1, kThreads, 0, stream, a);
  if (error != cudaSuccess)
    return error;
  error =
      launchOverlapped(assignRowsKernel, a.experts + 1, kThreads, 0, stream, a);
  return error != cudaSuccess ? error : cudaGetLastError();
}

} // namespace melt::rt::cuda
