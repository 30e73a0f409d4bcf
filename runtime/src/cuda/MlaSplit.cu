//===- MlaSplit.cu - absorbed MLA, heads together, split over the sequence ===//
#include "cuda/MlaSplit.h"

#include "cuda/PagedCache.cuh"
#include "cuda/VectorLoads.cuh"

#include <algorithm>
#include <cmath>

using namespace melt::rt::cuda;

namespace {

constexpr int kMaxNope = 256, kMaxLatent = 512, kMaxWidth = 1024;
/// Heads of a block of the chunk kernel, and rows scored at once.
constexpr int kHeadGroup = 16, kTile = 32;
constexpr int kChunkThreads = 256, kLatentPerThread = kMaxLatent / 256;
/// The most chunks a sequence is split into.
constexpr int kMaxChunks = 256;
/// Tokens whose absorbed queries one block computes (W_UK read once).
constexpr int kQueryTokens = 8;

/// Grid (heads, latent / 128, tokens / kQueryTokens), 256 threads: two
/// threads per latent column, each over half of the nope dimension (W_UK's
/// rows read coalesced, 16 loads in flight), added in shared memory.
__global__ void __launch_bounds__(256)
    absorbQueryKernel(const float *qNope, const float *wUk, int tokens,
                      int heads, int nope, int latent, float *qLat) {
  __shared__ float q[kQueryTokens][kMaxNope];
  __shared__ float half[kQueryTokens][128];
  const int h = blockIdx.x, column = threadIdx.x % 128;
  const int l = blockIdx.y * 128 + column, part = threadIdx.x / 128;
  const int t0 = blockIdx.z * kQueryTokens;
  const int count = min(kQueryTokens, tokens - t0);
  for (int i = threadIdx.x; i < count * nope; i += blockDim.x)
    q[i / nope][i % nope] =
        qNope[(size_t(t0 + i / nope) * heads + h) * nope + i % nope];
  __syncthreads();
  float acc[kQueryTokens] = {};
  const int begin = part * (nope / 2), end = part ? nope : nope / 2;
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
  if (part == 1)
    for (int t = 0; t < kQueryTokens; ++t)
      half[t][column] = acc[t];
  __syncthreads();
  if (part == 0 && l < latent)
    for (int t = 0; t < count; ++t)
      qLat[(size_t(t0 + t) * heads + h) * latent + l] =
          acc[t] + half[t][column];
}

/// The 16 sums of 16 per-lane values in 16 shuffles (not 16 x 5): each
/// step exchanges the half a lane gives up. Afterwards lane i holds the sum
/// of value headOfLane(i) (lanes 2j and 2j + 1 the same).
__device__ __forceinline__ float warpSums16(float (&v)[kHeadGroup], int lane) {
#pragma unroll
  for (int width = 8; width >= 1; width >>= 1) {
    const bool upper = lane & (2 * width);
#pragma unroll
    for (int i = 0; i < width; ++i) {
      float give = upper ? v[i] : v[i + width];
      float keep = upper ? v[i + width] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, give, 2 * width);
    }
  }
  return v[0] + __shfl_xor_sync(0xffffffffu, v[0], 1);
}
__device__ __forceinline__ int headOfLane(int lane) {
  return ((lane >> 4) & 1) * 8 + ((lane >> 3) & 1) * 4 + ((lane >> 2) & 1) * 2 +
         ((lane >> 1) & 1);
}

struct ChunkArgs {
  const float *qLat, *qRope, *cache;
  PagedLayout layout;
  int heads, rope, latent, chunkRows, chunks;
  float scale;
  float *partialOut, *partialMax, *partialSum;
  int32_t *bad;
};

/// Grid (chunks, tokens, head groups), kChunkThreads threads. Rows of the
/// chunk in tiles of kTile: each warp loads whole rows (every load of a
/// row in flight at once), keeps their latent part in shared memory and
/// scores them against every head of the group; then the online softmax per
/// head; then each thread adds the tile's weighted rows (from shared
/// memory) into its latent columns of every head.
__global__ void __launch_bounds__(kChunkThreads)
    latentChunkKernel(ChunkArgs a) {
  extern __shared__ float shared[];
  __shared__ float p[kHeadGroup][kTile];
  __shared__ float runMax[kHeadGroup], runSum[kHeadGroup], factor[kHeadGroup];
  __shared__ int rows[kTile];
  const int c = blockIdx.x, t = blockIdx.y, h0 = blockIdx.z * kHeadGroup;
  const int group = min(kHeadGroup, a.heads - h0);
  const int width = a.latent + a.rope;
  float *q = shared;                             // [kHeadGroup][width]
  float *tileRows = shared + kHeadGroup * width; // [kTile][latent]
  const int visible = a.layout.positions[t] + 1;
  const int seq = a.layout.sequences[t];
  const int begin = c * a.chunkRows, end = min(visible, begin + a.chunkRows);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t head0 = size_t(t) * a.heads + h0;
  // The group's queries, kBatch loads in flight per thread (one at a time,
  // each would wait for the last: tens of microseconds).
  constexpr int kBatch = 12;
  for (int base = threadIdx.x; base < kHeadGroup * width;
       base += kBatch * kChunkThreads) {
    float v[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      int i = base + u * kChunkThreads, h = i / width, j = i % width;
      v[u] = i >= kHeadGroup * width || h >= group ? 0.f
             : j < a.latent ? a.qLat[(head0 + h) * a.latent + j]
                            : a.qRope[(head0 + h) * a.rope + j - a.latent];
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u)
      if (base + u * kChunkThreads < kHeadGroup * width)
        q[base + u * kChunkThreads] = v[u];
  }
  if (threadIdx.x < kHeadGroup) {
    runMax[threadIdx.x] = -INFINITY;
    runSum[threadIdx.x] = 0.f;
  }
  float o[kHeadGroup][kLatentPerThread] = {};
  for (int tile = begin; tile < end; tile += kTile) {
    const int n = min(kTile, end - tile);
    __syncthreads(); // q loaded; the last tile's p, rows and tileRows read
    if (threadIdx.x < n) {
      int row = cacheRow(a.layout, seq, tile + threadIdx.x);
      if (row < 0)
        *a.bad = 1;
      rows[threadIdx.x] = row;
    }
    __syncthreads();
    for (int s = warp; s < n; s += kChunkThreads / 32) {
      float v[kMaxWidth / 32];
      const float *row = a.cache + size_t(max(rows[s], 0)) * width;
#pragma unroll
      for (int i = 0; i < kMaxWidth / 32; ++i) {
        int j = lane + 32 * i;
        v[i] = rows[s] >= 0 && j < width ? row[j] : 0.f;
      }
      float acc[kHeadGroup] = {};
#pragma unroll
      for (int i = 0; i < kMaxWidth / 32; ++i) {
        int j = lane + 32 * i;
        if (j < width) {
          if (j < a.latent)
            tileRows[s * a.latent + j] = v[i];
#pragma unroll
          for (int h = 0; h < kHeadGroup; ++h)
            acc[h] += q[h * width + j] * v[i];
        }
      }
      float sum = warpSums16(acc, lane);
      if (lane % 2 == 0)
        p[headOfLane(lane)][s] = rows[s] >= 0 ? sum * a.scale : -INFINITY;
    }
    __syncthreads();
    for (int h = warp; h < group; h += kChunkThreads / 32) {
      float score = lane < n ? p[h][lane] : -INFINITY;
      float top = score;
      for (int offset = 16; offset > 0; offset >>= 1)
        top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, offset));
      float before = runMax[h], now = fmaxf(before, top);
      // No row seen yet (all -inf): nothing to weigh, nothing to rescale.
      float e = now == -INFINITY ? 0.f : expf(score - now);
      float sum = warpSum(e);
      if (lane < kTile)
        p[h][lane] = e;
      if (lane == 0) {
        float f = before == -INFINITY ? 0.f : expf(before - now);
        factor[h] = f;
        runSum[h] = runSum[h] * f + sum;
        runMax[h] = now;
      }
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < kHeadGroup; ++h)
#pragma unroll
      for (int j = 0; j < kLatentPerThread; ++j)
        o[h][j] *= h < group ? factor[h] : 0.f;
    for (int s = 0; s < n; ++s) {
#pragma unroll
      for (int j = 0; j < kLatentPerThread; ++j) {
        int l = threadIdx.x + j * kChunkThreads;
        float v = l < a.latent ? tileRows[s * a.latent + l] : 0.f;
#pragma unroll
        for (int h = 0; h < kHeadGroup; ++h)
          o[h][j] += p[h][s] * v;
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

/// Grid (tokens * heads, valueDim / 32), 256 threads: the chunks' outputs
/// combined into the latent output, then 32 value columns of W_UV a warp
/// per column (coalesced along the latent dimension).
__global__ void combineValueKernel(const float *partialOut,
                                   const float *partialMax,
                                   const float *partialSum, const float *wUv,
                                   int heads, int chunks, int latent,
                                   int valueDim, float *out) {
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
      m[i] = c < chunks ? partialMax[slot] : -INFINITY;
      sums[i] = c < chunks ? partialSum[slot] : 0.f;
      top = fmaxf(top, sums[i] > 0.f ? m[i] : -INFINITY);
    }
    for (int offset = 16; offset > 0; offset >>= 1)
      top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, offset));
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
  for (int v = blockIdx.y * 32 + warp; v < min(valueDim, (blockIdx.y + 1) * 32);
       v += blockDim.x / 32) {
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

} // namespace

bool melt::rt::cuda::mlaSplitFits(const MlaSplitShape &s) {
  return s.latent > 0 && s.latent <= kMaxLatent && s.nope > 0 &&
         s.nope <= kMaxNope && s.rope >= 0 && s.latent + s.rope <= kMaxWidth &&
         s.valueDim > 0 && s.heads > 0;
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

cudaError_t melt::rt::cuda::mlaSplit(const float *qNope, const float *qRope,
                                     const float *cache,
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
  ChunkArgs a{};
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
  absorbQueryKernel<<<dim3(s.heads, (s.latent + 127) / 128,
                           (s.tokens + kQueryTokens - 1) / kQueryTokens),
                      256, 0, stream>>>(qNope, wUk, s.tokens, s.heads, s.nope,
                                        s.latent, qLat);
  size_t shared =
      (size_t(kHeadGroup) * (s.latent + s.rope) + size_t(kTile) * s.latent) *
      sizeof(float);
  if (shared > 48 * 1024)
    if (cudaError_t e = cudaFuncSetAttribute(
            latentChunkKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
            int(shared));
        e != cudaSuccess)
      return e;
  latentChunkKernel<<<dim3(chunks, s.tokens,
                           (s.heads + kHeadGroup - 1) / kHeadGroup),
                      kChunkThreads, shared, stream>>>(a);
  combineValueKernel<<<dim3(s.tokens * s.heads, (s.valueDim + 31) / 32), 256,
                       size_t(s.latent) * sizeof(float), stream>>>(
      a.partialOut, a.partialMax, a.partialSum, wUv, s.heads, chunks, s.latent,
      s.valueDim, out);
  return cudaGetLastError();
}
