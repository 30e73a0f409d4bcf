//===- MlaSplit.cu - absorbed MLA, heads together, split over the sequence ===//
#include "cuda/MlaSplit.h"

#include "cuda/DependentLaunch.cuh"
#include "cuda/MlaDecode.h"
#include "cuda/PagedCache.cuh"
#include "cuda/RopeRotation.cuh"
#include "cuda/ScratchLayout.h"
#include "cuda/VectorLoads.cuh"

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>

using namespace melt::rt::cuda;

namespace {

constexpr int kMaxNope = 256, kMaxLatent = 512, kMaxWidth = 640;
/// Heads of a block of the chunk kernel, and rows scored at once. Where
/// the blocks of 16 heads would be few (a decode step of a few tokens over
/// a short context: a handful of blocks on 132 multiprocessors), blocks of
/// 4 heads: each cached row is then read by 4 blocks (from L2), each block
/// has a quarter of the work.
constexpr int kHeadGroup = 16, kSmallHeadGroup = 4, kTile = 32;
/// Below this many blocks a kernel of the split takes its narrow form.
constexpr int kFewBlocks = 64;
constexpr int kChunkThreads = 256, kLatentPerThread = kMaxLatent / 256;
/// The most chunks a sequence is split into.
constexpr int kMaxChunks = 256;
/// Tokens whose absorbed queries one block computes (W_UK read once).
constexpr int kQueryTokens = 8;

/// Grid (heads, latent / (256 / Parts), tokens / kQueryTokens), 256
/// threads: Parts threads per latent column, each over a part of the nope
/// dimension (W_UK's rows read coalesced, 16 loads in flight), added in
/// shared memory. Parts 2 for many tokens; 8 for one slab of them, where
/// 4x the blocks, each with a quarter of the loads, keep more of W_UK in
/// flight (it is read once either way). Rows of qLat are [latent] (F32),
/// or with qRope [latent + rope]: the latent query then q_rope, as
/// MlaDecode.cu reads them (BF16; the blocks of the first latent columns
/// copy q_rope). q_nope's (token, head) rows are qStride values apart
/// (nope, or nope + rope in a query projection's rows). With `projected`,
/// q_nope is its query's and q_rope is rotated from it here (the rope
/// kernel's arithmetic: the same bits as the rope, then a copy).
template <int Parts, typename OutT>
__device__ __forceinline__ void
absorbQueryRows(Operand qNope, int qStride, const float *wUk, int tokens,
                int heads, int nope, int latent, const float *qRope, int rope,
                OutT *qLat, const ProjectedQuery *projected) {
  awaitPriorKernels();
  const int rowWidth = latent + (qRope || projected ? rope : 0);
  constexpr int kColumns = 256 / Parts;
  __shared__ float q[kQueryTokens][kMaxNope];
  __shared__ float partial[Parts - 1][kQueryTokens][kColumns];
  const int h = blockIdx.x, column = threadIdx.x % kColumns;
  const int l = blockIdx.y * kColumns + column, part = threadIdx.x / kColumns;
  const int t0 = blockIdx.z * kQueryTokens;
  const int count = min(kQueryTokens, tokens - t0);
  for (int i = threadIdx.x; i < count * nope; i += blockDim.x)
    q[i / nope][i % nope] =
        load(qNope, (size_t(t0 + i / nope) * heads + h) * qStride + i % nope);
  __syncthreads();
  float acc[kQueryTokens] = {};
  const int begin = part * nope / Parts, end = (part + 1) * nope / Parts;
  if (l < latent) {
    const float *w = wUk + size_t(h) * nope * latent + l;
#pragma unroll 16
    for (int n = begin; n < end; ++n) {
      float v = w[size_t(n) * latent];
#pragma unroll
      for (int t = 0; t < kQueryTokens; ++t)
        acc[t] += q[t][n] * v;
    }
  }
  if (part > 0)
    for (int t = 0; t < kQueryTokens; ++t)
      partial[part - 1][t][column] = acc[t];
  __syncthreads();
  if (part == 0 && l < latent)
    for (int t = 0; t < count; ++t) {
      float sum = acc[t];
#pragma unroll
      for (int i = 0; i < Parts - 1; ++i)
        sum += partial[i][t][column];
      storeValue(qLat, (size_t(t0 + t) * heads + h) * rowWidth + l, sum);
    }
  if (projected && blockIdx.y == 0) {
    const int half = rope / 2;
    for (int i = threadIdx.x; i < count * half; i += blockDim.x) {
      const int t = t0 + i / half;
      const size_t th = size_t(t) * heads + h;
      const RotatedPair r = rotatePair(
          Operand{projected->q, projected->bf16}, th * qStride + nope, i % half,
          rope, projected->interleaved, projected->positions[t],
          projected->freqs, projected->mscale);
      storeValue(qLat, th * rowWidth + latent + r.a, r.ya);
      storeValue(qLat, th * rowWidth + latent + r.b, r.yb);
    }
  } else if (qRope && blockIdx.y == 0) {
    for (int i = threadIdx.x; i < count * rope; i += blockDim.x) {
      const size_t th = size_t(t0 + i / rope) * heads + h;
      storeValue(qLat, th * rowWidth + latent + i % rope,
                 qRope[th * rope + i % rope]);
    }
  }
}

template <int Parts, typename OutT>
__global__ void __launch_bounds__(256)
    absorbQueryKernel(const float *qNope, const float *wUk, int tokens,
                      int heads, int nope, int latent, const float *qRope,
                      int rope, OutT *qLat) {
  absorbQueryRows<Parts>(Operand{qNope, false}, nope, wUk, tokens, heads, nope,
                         latent, qRope, rope, qLat, nullptr);
}

/// absorbQueryKernel of a query projection's rows (ProjectedQuery).
template <int Parts, typename OutT>
__global__ void __launch_bounds__(256)
    absorbProjectedQueryKernel(const float *wUk, int tokens, int heads,
                               int nope, int latent, int rope, OutT *qLat,
                               ProjectedQuery projected) {
  absorbQueryRows<Parts>(Operand{projected.q, projected.bf16}, nope + rope, wUk,
                         tokens, heads, nope, latent, nullptr, rope, qLat,
                         &projected);
}

/// The N warp-wide sums of N per-lane values in N - 1 + log2(32 / N)
/// shuffles (not N x 5): each step exchanges the half of its values a lane
/// gives up. Afterwards each lane holds the sum of value sumIndexOfLane<N>.
template <int N>
__device__ __forceinline__ float warpSumsOf(float (&v)[N], int lane) {
  int offset = 16;
#pragma unroll
  for (int width = N / 2; width >= 1; width /= 2, offset /= 2) {
    const bool upper = lane & offset;
#pragma unroll
    for (int i = 0; i < width; ++i) {
      float give = upper ? v[i] : v[i + width];
      float keep = upper ? v[i + width] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, give, offset);
    }
  }
  float sum = v[0];
#pragma unroll
  for (; offset >= 1; offset /= 2)
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  return sum;
}
template <int N> __device__ __forceinline__ int sumIndexOfLane(int lane) {
  int index = 0, offset = 16;
#pragma unroll
  for (int width = N / 2; width >= 1; width /= 2, offset /= 2)
    if (lane & offset)
      index += width;
  return index;
}

template <typename CacheT> struct ChunkArgs {
  const float *qLat, *qRope;
  const CacheT *cache;
  PagedLayout layout;
  int heads, rope, latent, chunkRows, chunks;
  float scale;
  float *partialOut, *partialMax, *partialSum;
  int32_t *bad;
};

/// Heads each warp scores.
constexpr int kWarpHeads = 4;

/// Grid (chunks, tokens, groups of HeadGroup heads), kChunkThreads threads.
/// Rows of the chunk in tiles of kTile: the block loads the tile's rows
/// into shared memory (every load in flight at once, 16 bytes each); each
/// warp scores a share of them (half for 16 heads, an eighth for 4)
/// against 4 of the group's heads, whose queries it keeps in registers (a
/// row value read from shared memory serves 4 heads); then the online
/// softmax per head; then each thread adds the tile's weighted rows into
/// its latent columns of every head.
template <int HeadGroup, typename CacheT>
__global__ void __launch_bounds__(kChunkThreads)
    latentChunkKernel(ChunkArgs<CacheT> a) {
  // Warps per set of rows (one per 4 heads), sets of rows, rows a warp
  // scores per tile.
  constexpr int kQuads = HeadGroup / kWarpHeads;
  constexpr int kRowSets = kChunkThreads / 32 / kQuads;
  constexpr int kRowsPerWarp = kTile / kRowSets;
  awaitPriorKernels();
  extern __shared__ float4 sharedRows[];
  float *tileRows = reinterpret_cast<float *>(sharedRows); // [kTile][width]
  __shared__ __align__(16) float p[kTile][HeadGroup];
  __shared__ float runMax[HeadGroup], runSum[HeadGroup], factor[HeadGroup];
  __shared__ int rows[kTile];
  const int c = blockIdx.x, t = blockIdx.y, h0 = blockIdx.z * HeadGroup;
  const int group = min(HeadGroup, a.heads - h0);
  const int width = a.latent + a.rope, width4 = width / 4;
  const int visible = a.layout.positions[t] + 1;
  const int seq = a.layout.sequences[t];
  const int begin = c * a.chunkRows, end = min(visible, begin + a.chunkRows);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // This warp's heads and their queries (latent then rope), in registers:
  // q[k][i] is column lane + 32 i of head firstHead + k.
  const int firstHead = (warp % kQuads) * kWarpHeads;
  float q[kWarpHeads][kMaxWidth / 32];
#pragma unroll
  for (int k = 0; k < kWarpHeads; ++k) {
    const int h = firstHead + k;
    const size_t head = size_t(t) * a.heads + h0 + h;
#pragma unroll
    for (int i = 0; i < kMaxWidth / 32; ++i) {
      int j = lane + 32 * i;
      q[k][i] = h >= group || j >= width ? 0.f
                : j < a.latent           ? a.qLat[head * a.latent + j]
                               : a.qRope[head * a.rope + j - a.latent];
    }
  }
  if (threadIdx.x < HeadGroup) {
    runMax[threadIdx.x] = -INFINITY;
    runSum[threadIdx.x] = 0.f;
  }
  float o[HeadGroup][kLatentPerThread] = {};
  for (int tile = begin; tile < end; tile += kTile) {
    const int n = min(kTile, end - tile);
    __syncthreads(); // the last tile's p, rows and tileRows read
    if (threadIdx.x < kTile) {
      int row =
          threadIdx.x < n ? cacheRow(a.layout, seq, tile + threadIdx.x) : -1;
      if (threadIdx.x < n && row < 0)
        *a.bad = 1;
      rows[threadIdx.x] = row;
    }
    __syncthreads();
    {
      constexpr int kLoads = kTile * kMaxWidth / 4 / kChunkThreads;
      float4 v[kLoads];
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        int i = threadIdx.x + u * kChunkThreads, s = i / width4;
        v[u] = s < kTile && rows[s] >= 0
                   ? loadValues4(a.cache + size_t(rows[s]) * width,
                                 4 * size_t(i % width4))
                   : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        int i = threadIdx.x + u * kChunkThreads;
        if (i < kTile * width4)
          sharedRows[i] = v[u];
      }
    }
    __syncthreads();
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int s = warp / kQuads + kRowSets * r;
      if (s >= n)
        break;
      float acc[kWarpHeads] = {};
      const float *row = tileRows + s * width;
#pragma unroll
      for (int i = 0; i < kMaxWidth / 32; ++i) {
        int j = lane + 32 * i;
        float v = j < width ? row[j] : 0.f;
#pragma unroll
        for (int k = 0; k < kWarpHeads; ++k)
          acc[k] += q[k][i] * v;
      }
      float sum = warpSumsOf<kWarpHeads>(acc, lane);
      if (lane % (32 / kWarpHeads) == 0)
        p[s][firstHead + sumIndexOfLane<kWarpHeads>(lane)] =
            rows[s] >= 0 ? sum * a.scale : -INFINITY;
    }
    __syncthreads();
    for (int h = warp; h < group; h += kChunkThreads / 32) {
      float score = lane < n ? p[lane][h] : -INFINITY;
      float top = warpMax(score);
      float before = runMax[h], now = fmaxf(before, top);
      // No row seen yet (all -inf): nothing to weigh, nothing to rescale.
      float e = now == -INFINITY || lane >= n ? 0.f : expf(score - now);
      float sum = warpSum(e);
      if (lane < kTile)
        p[lane][h] = e;
      // Every lane has read runMax[h] before lane 0 replaces it.
      __syncwarp();
      if (lane == 0) {
        float f = before == -INFINITY ? 0.f : expf(before - now);
        factor[h] = f;
        runSum[h] = runSum[h] * f + sum;
        runMax[h] = now;
      }
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < HeadGroup; ++h)
#pragma unroll
      for (int j = 0; j < kLatentPerThread; ++j)
        o[h][j] *= h < group ? factor[h] : 0.f;
    for (int s = 0; s < n; ++s) {
      float weight[HeadGroup];
#pragma unroll
      for (int h = 0; h < HeadGroup; h += 4) {
        float4 w4 = *reinterpret_cast<const float4 *>(&p[s][h]);
        weight[h] = w4.x;
        weight[h + 1] = w4.y;
        weight[h + 2] = w4.z;
        weight[h + 3] = w4.w;
      }
#pragma unroll
      for (int j = 0; j < kLatentPerThread; ++j) {
        int l = threadIdx.x + j * kChunkThreads;
        float v = l < a.latent ? tileRows[s * width + l] : 0.f;
#pragma unroll
        for (int h = 0; h < HeadGroup; ++h)
          o[h][j] += weight[h] * v;
      }
    }
  }
  __syncthreads();
  const size_t slot = (size_t(t) * a.chunks + c) * a.heads + h0;
  for (int h = 0; h < group; ++h) {
#pragma unroll
    for (int j = 0; j < kLatentPerThread; ++j) {
      int l = threadIdx.x + j * kChunkThreads;
      if (l < a.latent)
        a.partialOut[(slot + h) * a.latent + l] = o[h][j];
    }
  }
  if (threadIdx.x < group) {
    a.partialMax[slot + threadIdx.x] = runMax[threadIdx.x];
    a.partialSum[slot + threadIdx.x] = runSum[threadIdx.x];
  }
}

/// out[t, h, v] for the block's `columns` value columns (blockIdx.y): a
/// warp per column, W_UV's row read coalesced along the latent dimension.
__device__ __forceinline__ void
projectValues(const float *olat, const float *wUv, int t, int h, int heads,
              int latent, int valueDim, int columns, float *out) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int v = blockIdx.y * columns + warp;
       v < min(valueDim, (blockIdx.y + 1) * columns); v += blockDim.x / 32) {
    const float *w = wUv + (size_t(h) * valueDim + v) * latent;
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxLatent / 32; ++i) {
      int l = lane + 32 * i;
      if (l < latent)
        sum += olat[l] * w[l];
    }
    sum = warpSum(sum);
    if (lane == 0)
      out[(size_t(t) * heads + h) * valueDim + v] = sum;
  }
}

/// The chunks' statistics: separate maxima and sums (latentChunkKernel's),
/// or (max, sum) pairs (MlaDecode.cu's).
struct ChunkStats {
  const float *max = nullptr, *sum = nullptr;
  const float2 *pairs = nullptr;
  __device__ float2 operator[](size_t slot) const {
    return pairs ? pairs[slot] : make_float2(max[slot], sum[slot]);
  }
};

/// Grid (tokens * heads, valueDim / columns), 256 threads: the chunks'
/// outputs combined into the latent output, then `columns` value columns
/// of W_UV a warp per column (coalesced along the latent dimension). 32
/// columns a block; 8 where the blocks would be few (each then combines
/// the chunks again, from L2, for a quarter of the columns).
__global__ void combineValueKernel(const float *partialOut, ChunkStats stats,
                                   const float *wUv, int heads, int chunks,
                                   int latent, int valueDim, int columns,
                                   float *out) {
  awaitPriorKernels();
  extern __shared__ float olat[];
  __shared__ float weight[kMaxChunks];
  __shared__ float total;
  const int t = blockIdx.x / heads, h = blockIdx.x % heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // Each chunk's weight exp(max_c - max) / sum_c' sum_c' exp(max_c' - max),
  // the statistics read by as many threads at once.
  if (warp == 0) {
    float m[kMaxChunks / 32], sums[kMaxChunks / 32];
    float top = -INFINITY;
#pragma unroll
    for (int i = 0; i < kMaxChunks / 32; ++i) {
      int c = lane + 32 * i;
      size_t slot = (size_t(t) * chunks + c) * heads + h;
      const float2 stat =
          c < chunks ? stats[slot] : make_float2(-INFINITY, 0.f);
      m[i] = stat.x;
      sums[i] = stat.y;
      top = fmaxf(top, sums[i] > 0.f ? m[i] : -INFINITY);
    }
    top = warpMax(top);
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxChunks / 32; ++i) {
      float w = sums[i] > 0.f ? expf(m[i] - top) : 0.f;
      weight[lane + 32 * i] = w;
      sum += w * sums[i];
    }
    sum = warpSum(sum);
    if (lane == 0)
      total = sum;
  }
  __syncthreads();
  const float norm = total > 0.f ? 1.f / total : 0.f;
  for (int l = threadIdx.x; l < latent; l += blockDim.x) {
    float sum = 0.f;
#pragma unroll 8
    for (int c = 0; c < chunks; ++c) {
      size_t slot = (size_t(t) * chunks + c) * heads + h;
      if (weight[c] > 0.f)
        sum += partialOut[slot * latent + l] * weight[c];
    }
    olat[l] = sum * norm;
  }
  __syncthreads();
  projectValues(olat, wUv, t, h, heads, latent, valueDim, columns, out);
}

/// Grid (slots * heads), 128 threads: each slot's absorbed query (latent,
/// then rope) in BF16, as the tensor-core kernel reads it; zeros in a slot
/// that holds no token.
__global__ void packQueriesKernel(const float *qLat, const float *qRope,
                                  const int32_t *tokenOfSlot, int heads,
                                  int latent, int rope,
                                  __nv_bfloat16 *queries) {
  awaitPriorKernels();
  const size_t sh = blockIdx.x;
  const int t = tokenOfSlot[sh / heads];
  const size_t th = size_t(t) * heads + sh % heads;
  for (int i = threadIdx.x; i < latent + rope; i += blockDim.x)
    queries[sh * (latent + rope) + i] =
        __float2bfloat16(t < 0        ? 0.f
                         : i < latent ? qLat[th * latent + i]
                                      : qRope[th * rope + i - latent]);
}

/// Grid (capacity, sequences), 144 threads (576 values, 4 each): the
/// cached rows of each sequence up to its length, in BF16, contiguous per
/// sequence (rows `capacity` apart); a position without a page sets *bad
/// and its row is zero.
template <typename CacheT>
__global__ void cacheToBf16Kernel(const CacheT *cache, PagedLayout layout,
                                  int width, int capacity, __nv_bfloat16 *rows,
                                  int32_t *bad) {
  awaitPriorKernels();
  const int p = blockIdx.x, b = blockIdx.y;
  if (p >= layout.lengths[b])
    return;
  const int row = cacheRow(layout, b, p);
  if (row < 0 && threadIdx.x == 0)
    *bad = 1;
  __nv_bfloat16 *to = rows + (size_t(b) * capacity + p) * width;
  for (int i = 4 * threadIdx.x; i < width; i += 4 * blockDim.x) {
    float4 v = row < 0 ? make_float4(0.f, 0.f, 0.f, 0.f)
                       : loadValues4(cache + size_t(row) * width, i);
    to[i] = __float2bfloat16(v.x);
    to[i + 1] = __float2bfloat16(v.y);
    to[i + 2] = __float2bfloat16(v.z);
    to[i + 3] = __float2bfloat16(v.w);
  }
}

// A prefill's query tokens attend in groups: the tokens of one sequence
// at positions p0 + [0, G) share a group (G = 64 / heads, so that a block
// of the tensor-core kernel holds 64 query rows and reads each cached row
// once for all of them), each row masked at its own position. Groups are
// laid out sequence by sequence in slots of G tokens (a sequence's last
// group padded); a sequence's tokens in a step are at consecutive
// positions, so ceil(tokens / G) + sequences groups hold them.

/// Grid over tokens: each sequence's first and last position in the step
/// (minPos / maxPos start at INT_MAX / -1).
__global__ void positionSpanKernel(PagedLayout layout, int tokens,
                                   int32_t *minPos, int32_t *maxPos) {
  awaitPriorKernels();
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= tokens)
    return;
  const int b = layout.sequences[t];
  if (b < 0 || b >= layout.batch)
    return;
  atomicMin(&minPos[b], layout.positions[t]);
  atomicMax(&maxPos[b], layout.positions[t]);
}

/// One thread: each sequence's first group; *overflow where positions
/// spread beyond the groups the scratch holds (not consecutive).
__global__ void groupBaseKernel(int sequences, int group, int maxGroups,
                                const int32_t *minPos, const int32_t *maxPos,
                                int32_t *groupBase, int32_t *overflow) {
  awaitPriorKernels();
  int base = 0;
  for (int b = 0; b < sequences; ++b) {
    groupBase[b] = base;
    int span = maxPos[b] >= minPos[b] ? maxPos[b] - minPos[b] + 1 : 0;
    base += (span + group - 1) / group;
  }
  if (base > maxGroups)
    *overflow = 1;
}

/// Grid over tokens: each token's slot, and each group's sequence and
/// length (its last row's).
__global__ void placeTokensKernel(PagedLayout layout, int tokens, int group,
                                  int maxGroups, const int32_t *minPos,
                                  const int32_t *groupBase,
                                  int32_t *slotOfToken, int32_t *tokenOfSlot,
                                  int32_t *rowLengths, int32_t *groupSequence,
                                  int32_t *groupLengths) {
  awaitPriorKernels();
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= tokens)
    return;
  const int b = layout.sequences[t], position = layout.positions[t];
  const int r = b >= 0 && b < layout.batch ? position - minPos[b] : -1;
  const int g = r < 0 ? maxGroups : groupBase[b] + r / group;
  if (g >= maxGroups) {
    slotOfToken[t] = -1;
    return;
  }
  const int slot = g * group + r % group;
  slotOfToken[t] = slot;
  tokenOfSlot[slot] = t;
  rowLengths[slot] = position + 1;
  groupSequence[g] = b;
  atomicMax(&groupLengths[g], position + 1);
}

/// Grid (groups), 32 threads: a group's page table names its sequence's
/// contiguous BF16 rows in pages of 32.
__global__ void groupTablesKernel(int pagesPerSequence,
                                  const int32_t *groupSequence,
                                  int32_t *tables) {
  awaitPriorKernels();
  const int g = blockIdx.x, b = groupSequence[g];
  for (int j = threadIdx.x; j < pagesPerSequence; j += blockDim.x)
    tables[size_t(g) * pagesPerSequence + j] = b * pagesPerSequence + j;
}

/// Grid (tokens * heads), 128 threads: a token's values from its slot
/// (zeros for a token without one).
__global__ void gatherValuesKernel(const float *slotValues,
                                   const int32_t *slotOfToken, int heads,
                                   int valueDim, float *out) {
  awaitPriorKernels();
  const size_t th = blockIdx.x;
  const int slot = slotOfToken[th / heads];
  const float *from =
      slotValues + (size_t(slot) * heads + th % heads) * valueDim;
  for (int i = threadIdx.x; i < valueDim; i += blockDim.x)
    out[th * valueDim + i] = slot < 0 ? 0.f : from[i];
}

/// Stage 3: the chunks merged, then W_UV.
void combineValues(const float *partialOut, const ChunkStats &stats,
                   const float *wUv, const MlaSplitShape &s, int chunks,
                   float *out, cudaStream_t stream) {
  const int columns =
      s.tokens * s.heads * ((s.valueDim + 31) / 32) < 2 * kFewBlocks ? 8 : 32;
  launchOverlapped(
      combineValueKernel,
      dim3(s.tokens * s.heads, (s.valueDim + columns - 1) / columns), 256,
      size_t(s.latent) * sizeof(float), stream, partialOut, stats, wUv, s.heads,
      chunks, s.latent, s.valueDim, columns, out);
}

/// Stage 1: q_lat = q_nope W_UK ([T, H, latent] F32; with qRope, rows of
/// [latent + rope] in OutT).
template <typename OutT>
void absorbQueries(const float *qNope, const float *wUk, const MlaSplitShape &s,
                   const float *qRope, OutT *qLat, cudaStream_t stream,
                   const ProjectedQuery *projected = nullptr) {
  const int slabs = (s.tokens + kQueryTokens - 1) / kQueryTokens;
  if (projected && slabs == 1)
    launchOverlapped(absorbProjectedQueryKernel<8, OutT>,
                     dim3(s.heads, (s.latent + 31) / 32, slabs), 256, 0, stream,
                     wUk, s.tokens, s.heads, s.nope, s.latent, s.rope, qLat,
                     *projected);
  else if (projected)
    launchOverlapped(absorbProjectedQueryKernel<2, OutT>,
                     dim3(s.heads, (s.latent + 127) / 128, slabs), 256, 0,
                     stream, wUk, s.tokens, s.heads, s.nope, s.latent, s.rope,
                     qLat, *projected);
  else if (slabs == 1)
    launchOverlapped(absorbQueryKernel<8, OutT>,
                     dim3(s.heads, (s.latent + 31) / 32, slabs), 256, 0, stream,
                     qNope, wUk, s.tokens, s.heads, s.nope, s.latent, qRope,
                     s.rope, qLat);
  else
    launchOverlapped(absorbQueryKernel<2, OutT>,
                     dim3(s.heads, (s.latent + 127) / 128, slabs), 256, 0,
                     stream, qNope, wUk, s.tokens, s.heads, s.nope, s.latent,
                     qRope, s.rope, qLat);
}

} // namespace

bool melt::rt::cuda::mlaSplitFits(const MlaSplitShape &s) {
  return s.latent > 0 && s.latent <= kMaxLatent && s.nope > 0 &&
         s.nope <= kMaxNope && s.rope >= 0 && s.latent % 4 == 0 &&
         s.rope % 4 == 0 && s.latent + s.rope <= kMaxWidth && s.valueDim > 0 &&
         s.heads > 0;
}

int melt::rt::cuda::mlaSplitChunks(const MlaSplitShape &s,
                                   int multiprocessors) {
  int groups = (s.heads + kHeadGroup - 1) / kHeadGroup;
  int blocks = std::max(1, s.tokens * groups);
  int most = std::clamp((s.maxVisible + kTile - 1) / kTile, 1, kMaxChunks);
  return std::clamp((2 * multiprocessors + blocks - 1) / blocks, 1, most);
}

static int chunkRowsOf(const MlaSplitShape &s, int chunks) {
  int rows = (s.maxVisible + chunks - 1) / chunks;
  return std::max(kTile, (rows + kTile - 1) / kTile * kTile);
}

size_t melt::rt::cuda::mlaSplitScratchFloats(const MlaSplitShape &s,
                                             int chunks) {
  size_t slots = size_t(s.tokens) * chunks * s.heads;
  return size_t(s.tokens) * s.heads * s.latent + slots * s.latent + 2 * slots;
}

template <typename CacheT>
cudaError_t melt::rt::cuda::mlaSplit(const float *qNope, const float *qRope,
                                     const CacheT *cache,
                                     const PagedLayout &layout,
                                     const float *wUk, const float *wUv,
                                     const MlaSplitShape &s, int chunks,
                                     float scale, float *scratch, float *out,
                                     int32_t *bad, cudaStream_t stream) {
  if (!mlaSplitFits(s) || chunks < 1 || chunks > kMaxChunks)
    return cudaErrorInvalidValue;
  if (s.tokens == 0)
    return cudaSuccess;
  float *qLat = scratch;
  size_t slots = size_t(s.tokens) * chunks * s.heads;
  ChunkArgs<CacheT> a{};
  a.qLat = qLat;
  a.qRope = qRope;
  a.cache = cache;
  a.layout = layout;
  a.heads = s.heads;
  a.rope = s.rope;
  a.latent = s.latent;
  a.chunks = chunks;
  a.chunkRows = chunkRowsOf(s, chunks);
  a.scale = scale;
  a.partialOut = qLat + size_t(s.tokens) * s.heads * s.latent;
  a.partialMax = a.partialOut + slots * s.latent;
  a.partialSum = a.partialMax + slots;
  a.bad = bad;
  absorbQueries<float>(qNope, wUk, s, nullptr, qLat, stream);
  size_t shared = size_t(kTile) * (s.latent + s.rope) * sizeof(float);
  const int wideGroups = (s.heads + kHeadGroup - 1) / kHeadGroup;
  const bool fewBlocks = chunks * s.tokens * wideGroups < kFewBlocks;
  auto chunkKernel = fewBlocks ? latentChunkKernel<kSmallHeadGroup, CacheT>
                               : latentChunkKernel<kHeadGroup, CacheT>;
  const int groupHeads = fewBlocks ? kSmallHeadGroup : kHeadGroup;
  if (shared > 48 * 1024)
    if (cudaError_t e = cudaFuncSetAttribute(
            chunkKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
            int(shared));
        e != cudaSuccess)
      return e;
  launchOverlapped(
      chunkKernel,
      dim3(chunks, s.tokens, (s.heads + groupHeads - 1) / groupHeads),
      kChunkThreads, shared, stream, a);
  ChunkStats stats;
  stats.max = a.partialMax;
  stats.sum = a.partialSum;
  combineValues(a.partialOut, stats, wUv, s, chunks, out, stream);
  return cudaGetLastError();
}

namespace {

/// Rows of a page of the BF16 copy (the tensor-core kernel reads tiles of
/// 32 rows of one page, its warpgroup form 64), query rows a block of it
/// holds, and query tokens per launch of it (bounds its partial sums).
constexpr int kCopyPageRows = 64, kGroupRows = 64, kQuerySlab = 4096;

/// Query tokens per group for `heads`.
int groupTokens(int heads) {
  return kGroupRows % heads == 0 ? kGroupRows / heads : 1;
}

/// Where the tensor-core path keeps what it makes, in its scratch. The
/// absorbed queries (tokens) and the latent outputs (slots) share a part,
/// as do the BF16 queries and the slots' values: each is dead before the
/// other is made.
struct TensorCoreScratch {
  int group, maxGroups, slots, capacity, pagesPerSequence, slabGroups,
      copyPages;
  size_t latent, queries, rows, tables, groupLengths, groupSequence, rowLengths,
      tokenOfSlot, slotOfToken, minPos, maxPos, groupBase, workspace, total;
  size_t workspaceBytes;
  TensorCoreScratch(const MlaSplitShape &s, int sequences, int smCount) {
    group = groupTokens(s.heads);
    maxGroups = (s.tokens + group - 1) / group + sequences;
    slots = maxGroups * group;
    capacity =
        (s.maxVisible + kCopyPageRows - 1) / kCopyPageRows * kCopyPageRows;
    pagesPerSequence = capacity / kCopyPageRows;
    copyPages = sequences * pagesPerSequence;
    slabGroups = std::min(maxGroups, std::max(1, kQuerySlab / group));
    const size_t slotRows = size_t(slots) * s.heads;
    size_t at = 0;
    auto part = [&](size_t bytes) {
      size_t begin = at;
      at += scratchPartBytes(bytes);
      return begin;
    };
    latent = part(slotRows * s.latent * sizeof(float));
    queries = part(std::max(slotRows * kLatentEntry * sizeof(__nv_bfloat16),
                            slotRows * s.valueDim * sizeof(float)));
    rows = part(size_t(sequences) * capacity * kLatentEntry *
                sizeof(__nv_bfloat16));
    tables = part(size_t(maxGroups) * pagesPerSequence * sizeof(int32_t));
    groupLengths = part(size_t(maxGroups) * sizeof(int32_t));
    groupSequence = part(size_t(maxGroups) * sizeof(int32_t));
    rowLengths = part(size_t(slots) * sizeof(int32_t));
    tokenOfSlot = part(size_t(slots) * sizeof(int32_t));
    slotOfToken = part(size_t(s.tokens) * sizeof(int32_t));
    minPos = part(size_t(sequences) * sizeof(int32_t));
    maxPos = part(size_t(sequences) * sizeof(int32_t));
    groupBase = part(size_t(sequences) * sizeof(int32_t));
    workspaceBytes = mlaDecodeWorkspaceBytes(args(s, 1.f, slabGroups), smCount);
    workspace = part(workspaceBytes);
    total = at;
  }
  /// The decode kernel's arguments for `count` groups.
  MlaDecodeArgs args(const MlaSplitShape &s, float scale, int count) const {
    MlaDecodeArgs a;
    a.batch = count;
    a.heads = s.heads * group;
    a.rowHeads = s.heads;
    a.pageSize = kCopyPageRows;
    a.maxPagesPerSequence = pagesPerSequence;
    a.cachePages = copyPages;
    a.maxLength = capacity;
    a.scale = scale;
    return a;
  }
};

} // namespace

bool melt::rt::cuda::mlaTensorCoresFit(const MlaSplitShape &s) {
  return mlaSplitFits(s) && s.latent == kLatentRank && s.rope == kRopeDim &&
         s.heads % 16 == 0 && s.maxVisible > 0;
}

size_t melt::rt::cuda::mlaTensorCoreScratchBytes(const MlaSplitShape &s,
                                                 int sequences, int smCount) {
  return TensorCoreScratch(s, sequences, smCount).total;
}

template <typename CacheT>
CudaStatus melt::rt::cuda::mlaTensorCores(
    GemmRunner &gemm, const float *qNope, const float *qRope,
    const CacheT *cache, const PagedLayout &layout, const float *wUk,
    const float *wUv, const MlaSplitShape &s, float scale, void *scratch,
    size_t scratchBytes, float *out, int32_t *bad, int32_t *spread,
    int smCount) {
  if (!mlaTensorCoresFit(s) || layout.batch < 1)
    return {"mla (tensor cores): unsupported shape"};
  if (s.tokens == 0)
    return CudaStatus::ok();
  const TensorCoreScratch plan(s, layout.batch, smCount);
  if (scratchBytes < plan.total)
    return {"mla (tensor cores): scratch too small"};
  cudaStream_t stream = gemm.stream();
  char *base = static_cast<char *>(scratch);
  auto ints = [&](size_t offset) {
    return reinterpret_cast<int32_t *>(base + offset);
  };
  auto *latent = reinterpret_cast<float *>(base + plan.latent);
  auto *queries = reinterpret_cast<__nv_bfloat16 *>(base + plan.queries);
  auto *slotValues = reinterpret_cast<float *>(base + plan.queries);
  auto *rows = reinterpret_cast<__nv_bfloat16 *>(base + plan.rows);
  auto failed = [](cudaError_t e) -> CudaStatus {
    if (e == cudaSuccess)
      return CudaStatus::ok();
    return {std::string("mla (tensor cores): ") + cudaGetErrorString(e)};
  };

  // Stage 1: q_lat[t, h] = q_nope[t, h] W_UK[h], every head in one call.
  GemmRunner::Batched absorb;
  absorb.m = s.tokens, absorb.n = s.latent, absorb.k = s.nope;
  absorb.batches = s.heads;
  absorb.xRow = int64_t(s.heads) * s.nope, absorb.xBatch = s.nope;
  absorb.wBatch = int64_t(s.nope) * s.latent;
  absorb.yRow = int64_t(s.heads) * s.latent, absorb.yBatch = s.latent;
  if (CudaStatus e = gemm.tf32Batched(qNope, wUk, latent, absorb))
    return e;

  // The groups, their slots and page tables.
  const int B = layout.batch, T = s.tokens;
  int32_t *minPos = ints(plan.minPos), *maxPos = ints(plan.maxPos);
  if (CudaStatus e = failed(
          cudaMemsetAsync(minPos, 0x7f, size_t(B) * sizeof(int32_t), stream)))
    return e;
  for (auto [at, value, bytes] :
       {std::tuple{plan.maxPos, 0xff, size_t(B) * 4},
        std::tuple{plan.tokenOfSlot, 0xff, size_t(plan.slots) * 4},
        std::tuple{plan.rowLengths, 0, size_t(plan.slots) * 4},
        std::tuple{plan.groupLengths, 0, size_t(plan.maxGroups) * 4},
        std::tuple{plan.groupSequence, 0, size_t(plan.maxGroups) * 4}})
    if (CudaStatus e = failed(cudaMemsetAsync(base + at, value, bytes, stream)))
      return e;
  launchOverlapped(positionSpanKernel, (T + 255) / 256, 256, 0, stream, layout,
                   T, minPos, maxPos);
  launchOverlapped(groupBaseKernel, 1, 1, 0, stream, B, plan.group,
                   plan.maxGroups, minPos, maxPos, ints(plan.groupBase),
                   spread);
  launchOverlapped(placeTokensKernel, (T + 255) / 256, 256, 0, stream, layout,
                   T, plan.group, plan.maxGroups, minPos, ints(plan.groupBase),
                   ints(plan.slotOfToken), ints(plan.tokenOfSlot),
                   ints(plan.rowLengths), ints(plan.groupSequence),
                   ints(plan.groupLengths));
  launchOverlapped(groupTablesKernel, plan.maxGroups, 32, 0, stream,
                   plan.pagesPerSequence, ints(plan.groupSequence),
                   ints(plan.tables));
  launchOverlapped(packQueriesKernel, unsigned(size_t(plan.slots) * s.heads),
                   128, 0, stream, latent, qRope, ints(plan.tokenOfSlot),
                   s.heads, s.latent, s.rope, queries);
  launchOverlapped(cacheToBf16Kernel<CacheT>, dim3(plan.capacity, B),
                   kLatentEntry / 4, 0, stream, cache, layout, kLatentEntry,
                   plan.capacity, rows, bad);
  if (CudaStatus e = failed(cudaGetLastError()))
    return e;

  // Stage 2: each group attends over its sequence's rows (the latent
  // outputs, in FP32, where the absorbed queries were).
  void *workspace = base + plan.workspace;
  for (int g0 = 0; g0 < plan.maxGroups; g0 += plan.slabGroups) {
    MlaDecodeArgs a =
        plan.args(s, scale, std::min(plan.slabGroups, plan.maxGroups - g0));
    const size_t row0 = size_t(g0) * plan.group * s.heads;
    a.queries = queries + row0 * kLatentEntry;
    a.cache = rows;
    a.blockTable = ints(plan.tables) + size_t(g0) * plan.pagesPerSequence;
    a.lengths = ints(plan.groupLengths) + g0;
    a.rowLengths = ints(plan.rowLengths) + size_t(g0) * plan.group;
    a.output = nullptr;
    a.outputF32 = latent + row0 * kLatentRank;
    if (CudaStatus e = failed(
            mlaDecode(a, workspace, plan.workspaceBytes, smCount, stream)))
      return e;
  }

  // Stage 3: values[slot, h] = latent[slot, h] W_UV[h]^T, then by token.
  GemmRunner::Batched value;
  value.m = plan.slots, value.n = s.valueDim, value.k = s.latent;
  value.batches = s.heads, value.wNK = true;
  value.xRow = int64_t(s.heads) * s.latent, value.xBatch = s.latent;
  value.wBatch = int64_t(s.valueDim) * s.latent;
  value.yRow = int64_t(s.heads) * s.valueDim, value.yBatch = s.valueDim;
  if (CudaStatus e = gemm.tf32Batched(latent, wUv, slotValues, value))
    return e;
  launchOverlapped(gatherValuesKernel, unsigned(size_t(T) * s.heads), 128, 0,
                   stream, slotValues, ints(plan.slotOfToken), s.heads,
                   s.valueDim, out);
  return failed(cudaGetLastError());
}

bool melt::rt::cuda::mlaDecodeStepFits(const MlaSplitShape &s) {
  return s.latent == kLatentRank && s.rope == kRopeDim && s.heads > 0 &&
         s.heads % 16 == 0 && s.nope > 0 && s.nope <= kMaxNope &&
         s.valueDim > 0;
}

namespace {

/// The chunk kernel's arguments for a decode step: entry t is token t and
/// its sequence t, the page table and lengths the step's; the split sized
/// by the table's capacity (the same for every replay of a recorded step),
/// at most kMaxChunks chunks (the combine's).
MlaDecodeArgs decodeStepArgs(const MlaSplitShape &s, const PagedLayout &layout,
                             float scale, int smCount) {
  MlaDecodeArgs a{};
  a.batch = s.tokens;
  a.heads = s.heads;
  a.pageSize = kPageRows;
  a.maxPagesPerSequence = layout.perSequence;
  a.maxLength = layout.perSequence * kPageRows;
  a.scale = scale;
  a.blockTable = layout.pages;
  a.lengths = layout.lengths;
  a.cachePages = layout.rows / kPageRows;
  if (mlaDecodeChunkCount(a, smCount) > kMaxChunks)
    a.chunksPerSequence = kMaxChunks;
  return a;
}

size_t decodeQueryBytes(const MlaSplitShape &s) {
  return (size_t(s.tokens) * s.heads * kLatentEntry * sizeof(__nv_bfloat16) +
          255) /
         256 * 256;
}

} // namespace

size_t melt::rt::cuda::mlaDecodeStepScratchBytes(const MlaSplitShape &s,
                                                 const PagedLayout &layout,
                                                 int smCount) {
  return decodeQueryBytes(s) +
         mlaDecodeWorkspaceBytes(decodeStepArgs(s, layout, 1.f, smCount),
                                 smCount);
}

cudaError_t melt::rt::cuda::mlaDecodeStep(
    const float *qNope, const float *qRope, const __nv_bfloat16 *cache,
    const PagedLayout &layout, const float *wUk, const float *wUv,
    const MlaSplitShape &s, float scale, void *scratch, size_t scratchBytes,
    float *out, int smCount, cudaStream_t stream,
    const ProjectedQuery *projected) {
  if (!mlaDecodeStepFits(s) || layout.batch != s.tokens ||
      layout.perSequence < 1 ||
      scratchBytes < mlaDecodeStepScratchBytes(s, layout, smCount))
    return cudaErrorInvalidValue;
  if (s.tokens == 0)
    return cudaSuccess;
  MlaDecodeArgs a = decodeStepArgs(s, layout, scale, smCount);
  auto *queries = static_cast<__nv_bfloat16 *>(scratch);
  a.queries = queries;
  a.cache = cache;
  absorbQueries(qNope, wUk, s, qRope, queries, stream, projected);
  const size_t queryBytes = decodeQueryBytes(s);
  MlaDecodePartials partials;
  if (cudaError_t e =
          mlaDecodeChunks(a, static_cast<char *>(scratch) + queryBytes,
                          scratchBytes - queryBytes, smCount, stream, partials);
      e != cudaSuccess)
    return e;
  ChunkStats stats;
  stats.pairs = partials.stats;
  combineValues(partials.sums, stats, wUv, s, partials.chunks, out, stream);
  return cudaGetLastError();
}

namespace melt::rt::cuda {
#define MELT_LATENT_CACHE_READERS(CacheT)                                      \
  template cudaError_t mlaSplit(                                               \
      const float *, const float *, const CacheT *, const PagedLayout &,       \
      const float *, const float *, const MlaSplitShape &, int, float,         \
      float *, float *, int32_t *, cudaStream_t);                              \
  template CudaStatus mlaTensorCores(                                          \
      GemmRunner &, const float *, const float *, const CacheT *,              \
      const PagedLayout &, const float *, const float *,                       \
      const MlaSplitShape &, float, void *, size_t, float *, int32_t *,        \
      int32_t *, int);
MELT_LATENT_CACHE_READERS(float)
MELT_LATENT_CACHE_READERS(__nv_bfloat16)
#undef MELT_LATENT_CACHE_READERS
} // namespace melt::rt::cuda
