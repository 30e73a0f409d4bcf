//===- ExpertGrouping.cu - expert choices grouped on the GPU --------------===//
//
// By experts, two kernels. The first (one block) counts each expert's
// pairs in shared memory and writes the group starts. The second (a block
// per expert, and one more for the rows past the last group) walks the
// pairs in order, 1024 at a time: each warp's matches are ranked by a
// ballot, the warps' counts added in warp order, so that a pair's row is
// its rank among its expert's pairs, the same every run.
//
// By chunks (a workspace given), three: counts per chunk and expert, their
// exclusive sums over the chunks with the group starts and padding rows
// (one block), and each chunk's ranks from its offsets: the same rows.
//
//===----------------------------------------------------------------------===//
#include "cuda/ExpertGrouping.h"

#include "cuda/DependentLaunch.cuh"

namespace melt::rt::cuda {
namespace {

constexpr int kThreads = 1024, kWarps = kThreads / 32;

/// Pair p counted in its expert's counts[e] (shared memory), or, its index
/// outside the experts, the bad flag raised.
__device__ __forceinline__ void countChoice(const ExpertGroupingArgs &a, int p,
                                            int *counts) {
  const int e = a.chosen[p];
  if (e >= 0 && e < a.experts)
    atomicAdd(&counts[e], 1);
  else
    *a.bad = 1;
}

/// By one thread: the groups' starts, each group `counts[e]` rows rounded
/// up to kExpertGroupRows, into starts[0 .. experts], and where given
/// where their pairs end into ends[0 .. experts).
__device__ void writeGroupStarts(const int *counts, int experts, int *starts,
                                 int *ends) {
  int start = 0;
  for (int e = 0; e < experts; ++e) {
    starts[e] = start;
    if (ends)
      ends[e] = start + counts[e];
    start += (counts[e] + kExpertGroupRows - 1) / kExpertGroupRows *
             kExpertGroupRows;
  }
  starts[experts] = start;
}

__global__ void __launch_bounds__(kThreads)
    countGroupsKernel(ExpertGroupingArgs a) {
  awaitPriorKernels();
  __shared__ int counts[kMaxGroupedExperts];
  for (int e = threadIdx.x; e < a.experts; e += kThreads)
    counts[e] = 0;
  __syncthreads();
  const int pairs = a.tokens * a.topK;
  for (int p = threadIdx.x; p < pairs; p += kThreads)
    countChoice(a, p, counts);
  __syncthreads();
  if (threadIdx.x == 0)
    writeGroupStarts(counts, a.experts, a.starts, a.ends);
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

constexpr int kChunkWarps = kGroupingChunk / 32;

/// Block c: chunk c's pairs of expert e into chunkOffsets[e * chunks + c]
/// (an expert's counts in chunk order, for the scan).
__global__ void __launch_bounds__(kGroupingChunk)
    countChunksKernel(ExpertGroupingArgs a) {
  awaitPriorKernels();
  __shared__ int counts[kMaxGroupedExperts];
  for (int e = threadIdx.x; e < a.experts; e += kGroupingChunk)
    counts[e] = 0;
  __syncthreads();
  const int p = blockIdx.x * kGroupingChunk + threadIdx.x;
  if (p < a.tokens * a.topK)
    countChoice(a, p, counts);
  __syncthreads();
  for (int e = threadIdx.x; e < a.experts; e += kGroupingChunk)
    a.chunkOffsets[size_t(e) * gridDim.x + blockIdx.x] = counts[e];
}

/// One block: each expert's counts replaced by their sums over the chunks
/// before (in chunk order; a warp an expert, 32 chunks a step, scanned by
/// shuffles), the group starts, and the padding rows (each group's past
/// its pairs, and past the last group) naming token 0.
__global__ void __launch_bounds__(kThreads)
    chunkOffsetsKernel(ExpertGroupingArgs a, int chunks) {
  awaitPriorKernels();
  __shared__ int totals[kMaxGroupedExperts], starts[kMaxGroupedExperts + 1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int e = warp; e < a.experts; e += kWarps) {
    int32_t *counts = a.chunkOffsets + size_t(e) * chunks;
    int carried = 0;
    for (int c0 = 0; c0 < chunks; c0 += 32) {
      const int c = c0 + lane;
      const int n = c < chunks ? counts[c] : 0;
      int inclusive = n;
      for (int d = 1; d < 32; d *= 2) {
        const int v = __shfl_up_sync(0xffffffffu, inclusive, d);
        if (lane >= d)
          inclusive += v;
      }
      if (c < chunks)
        counts[c] = carried + inclusive - n;
      carried += __shfl_sync(0xffffffffu, inclusive, 31);
    }
    if (lane == 0)
      totals[e] = carried;
  }
  __syncthreads();
  if (threadIdx.x == 0)
    writeGroupStarts(totals, a.experts, starts, nullptr);
  __syncthreads();
  for (int e = threadIdx.x; e <= a.experts; e += kThreads) {
    a.starts[e] = starts[e];
    if (a.ends && e < a.experts)
      a.ends[e] = starts[e] + totals[e];
  }
  // A warp per group's padding rows (fewer than kExpertGroupRows).
  for (int e = warp; e < a.experts; e += kWarps)
    for (int r = starts[e] + totals[e] + lane; r < starts[e + 1]; r += 32)
      a.tokenOfRow[r] = 0;
  for (int r = starts[a.experts] + threadIdx.x; r < a.capacity; r += kThreads)
    a.tokenOfRow[r] = 0;
}

/// Block c: each pair of chunk c its row, the group's start plus the
/// chunk's offset plus its rank among the chunk's pairs of its expert
/// (within a warp by __match_any_sync, the warps' counts added in warp
/// order from shared memory: kChunkWarps x experts values).
__global__ void __launch_bounds__(kGroupingChunk)
    assignChunksKernel(ExpertGroupingArgs a) {
  awaitPriorKernels();
  extern __shared__ int warpCounts[]; // [kChunkWarps][experts]
  for (int i = threadIdx.x; i < kChunkWarps * a.experts; i += kGroupingChunk)
    warpCounts[i] = 0;
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int p = blockIdx.x * kGroupingChunk + threadIdx.x;
  const bool inRange = p < a.tokens * a.topK;
  const int e = inRange ? a.chosen[p] : -1;
  const bool valid = inRange && e >= 0 && e < a.experts;
  if (inRange && !valid)
    a.rowOfPair[p] = -1; // counted as bad by the first kernel
  // Lanes of the same expert (the out-of-range and bad ones share -1).
  const unsigned same = __match_any_sync(0xffffffffu, valid ? e : -1);
  const int rank = __popc(same & ((1u << lane) - 1u));
  if (valid && rank == 0)
    warpCounts[warp * a.experts + e] = __popc(same);
  __syncthreads();
  if (valid) {
    int before = rank;
    for (int w = 0; w < warp; ++w)
      before += warpCounts[w * a.experts + e];
    const int row = a.starts[e] +
                    a.chunkOffsets[size_t(e) * gridDim.x + blockIdx.x] + before;
    a.rowOfPair[p] = row;
    a.tokenOfRow[row] = p / a.topK;
  }
}

} // namespace

int expertGroupingWorkspace(int pairs, int experts) {
  return (pairs + kGroupingChunk - 1) / kGroupingChunk * experts;
}

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
  if (a.chunkOffsets) {
    const int pairs = a.tokens * a.topK;
    const int chunks = (pairs + kGroupingChunk - 1) / kGroupingChunk;
    if (chunks == 0) { // no pair: empty groups, every row padding
      return launchOverlapped(chunkOffsetsKernel, 1, kThreads, 0, stream, a, 0);
    }
    cudaError_t error = launchOverlapped(countChunksKernel, chunks,
                                         kGroupingChunk, 0, stream, a);
    if (error == cudaSuccess)
      error = launchOverlapped(chunkOffsetsKernel, 1, kThreads, 0, stream, a,
                               chunks);
    const size_t shared = size_t(kChunkWarps) * a.experts * sizeof(int);
    if (error == cudaSuccess && shared > 48 * 1024)
      error = cudaFuncSetAttribute(assignChunksKernel,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   int(shared));
    if (error == cudaSuccess)
      error = launchOverlapped(assignChunksKernel, chunks, kGroupingChunk,
                               shared, stream, a);
    return error != cudaSuccess ? error : cudaGetLastError();
  }
  cudaError_t error =
      launchOverlapped(countGroupsKernel, 1, kThreads, 0, stream, a);
  if (error != cudaSuccess)
    return error;
  error =
      launchOverlapped(assignRowsKernel, a.experts + 1, kThreads, 0, stream, a);
  return error != cudaSuccess ? error : cudaGetLastError();
}

} // namespace melt::rt::cuda
