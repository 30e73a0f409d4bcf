//===- ModelKernels.cu - the model's F32 kernels (CUDA) ------------------===//
#include "cuda/ModelKernels.h"

#include "cuda/BlockQuantize.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/E4m3.cuh"
#include "cuda/ExpertCombine.cuh"
#include "cuda/ExpertPairs.cuh"
#include "cuda/OperandAccess.cuh"
#include "cuda/PagedCache.cuh"
#include "cuda/ResidentBlocks.h"
#include "cuda/RopeRotation.cuh"
#include "cuda/RouteInBlock.cuh"
#include "cuda/RowNorm.cuh"
#include "cuda/Silu.cuh"
#include "cuda/VectorLoads.cuh"
#include "cuda/WarpReduce.cuh"

#include "EnvSwitch.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <climits>
#include <type_traits>

using namespace melt::rt::cuda;

namespace {

/// A block per token. A thread's values of a batch are all loaded before
/// any is stored: the compiler keeps a load behind a store to memory it
/// cannot tell apart from the table's, so a loop that stores each value
/// before the next load waits a memory round trip per value (a batch-1
/// step's embedding, 2048 values: 4.4 us).
constexpr int kEmbeddingBatch = 8;

__global__ void embeddingKernel(const int32_t *ids, Operand table, int vocab,
                                int hidden, Result y, int32_t *badId) {
  awaitPriorKernels();
  int t = blockIdx.x;
  int id = ids[t];
  bool valid = id >= 0 && id < vocab;
  if (!valid && threadIdx.x == 0)
    *badId = 1;
  const int step = int(blockDim.x);
  for (int start = 0; start < hidden; start += kEmbeddingBatch * step) {
    float v[kEmbeddingBatch];
#pragma unroll
    for (int u = 0; u < kEmbeddingBatch; ++u) {
      const int h = start + u * step + int(threadIdx.x);
      v[u] = valid && h < hidden ? load(table, size_t(id) * hidden + h) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kEmbeddingBatch; ++u) {
      const int h = start + u * step + int(threadIdx.x);
      if (h < hidden)
        store(y, size_t(t) * hidden + h, v[u]);
    }
  }
}

/// A thread per (token, pair) and group of `rowsPerThread` of the token's
/// rows: the angle once (a double sincos), then the pair of each row (MLA's
/// query heads share their token's position: a thread per pair of each
/// head computed the same angle 16 times, 51 us for mini's 8192-token
/// query, about twice its bytes' time).
__global__ void ropeKernel(Operand x, const int32_t *positions, int tokens,
                           int rows, int dim, bool interleaved,
                           RopeFrequencies freqs, double mscale,
                           int rowsPerThread, Result y) {
  awaitPriorKernels();
  const int half = dim / 2;
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= size_t(tokens) * half)
    return;
  const int pair = int(i % half), token = int(i / half);
  const int firstRow = int(blockIdx.y) * rowsPerThread;
  const int lastRow = min(rows, firstRow + rowsPerThread);
  const RopeAngle angle = ropeAngle(pair, positions[token], freqs, mscale);
  for (int r = firstRow; r < lastRow; ++r) {
    const size_t base = (size_t(token) * rows + r) * dim;
    const RotatedPair p = rotateBy(angle, x, base, pair, dim, interleaved);
    store(y, base + p.a, p.ya);
    store(y, base + p.b, p.yb);
  }
}

/// A block per token, a thread per expert (and per group): routeInBlock,
/// its choices and weights written out.
__global__ void routeKernel(const float *logits, const float *bias, int experts,
                            RouterConfig cfg, int32_t *indices,
                            float *weights) {
  awaitPriorKernels();
  __shared__ RouteShared<kMaxRouterExperts> s;
  routeInBlock(logits + size_t(blockIdx.x) * experts, bias, experts, cfg, s);
  const size_t first = size_t(blockIdx.x) * cfg.topK;
  if (int(threadIdx.x) < cfg.topK) {
    indices[first + threadIdx.x] = s.expert[threadIdx.x];
    weights[first + threadIdx.x] = s.weight[threadIdx.x];
  }
}

/// Every thread of the block: the cache rows of positions [0, visible) of
/// sequence b into rows[]; whether all of them have a page (if not, *bad
/// is set once).
__device__ bool visibleRows(const PagedLayout &layout, int b, int visible,
                            int *rows, int32_t *bad) {
  __shared__ int missing;
  if (threadIdx.x == 0)
    missing = visible <= 0;
  __syncthreads();
  for (int s = threadIdx.x; s < visible; s += blockDim.x) {
    rows[s] = cacheRow(layout, b, s);
    if (rows[s] < 0)
      missing = 1;
  }
  __syncthreads();
  if (missing && threadIdx.x == 0)
    *bad = 1;
  return !missing;
}

template <typename CacheT>
__global__ void cacheAppendKernel(const float *first, const float *second,
                                  PagedLayout layout, int a, int b,
                                  CacheT *cache, int32_t *bad) {
  awaitPriorKernels();
  int t = blockIdx.x, width = a + b;
  int row = cacheRow(layout, layout.sequences[t], layout.positions[t]);
  if (row < 0) {
    if (threadIdx.x == 0)
      *bad = 1;
    return;
  }
  CacheT *to = cache + size_t(row) * width;
  for (int i = threadIdx.x; i < width; i += blockDim.x)
    storeValue(to, i,
               i < a ? first[size_t(t) * a + i]
                     : second[size_t(t) * b + i - a]);
}

/// A token a block (kNormThreads threads): its latent normalized into its
/// cache row (by its first warp where byWarp: normRowsByWarp, as rmsNorm
/// would), then its key rotated after it.
template <typename CacheT>
__global__ void __launch_bounds__(kNormThreads)
    appendLatentKernel(Operand latent, Operand gamma, float eps, int latentCols,
                       bool byWarp, Operand key, const int32_t *positions,
                       int ropeDim, bool interleaved, RopeFrequencies freqs,
                       double mscale, PagedLayout layout, CacheT *cache,
                       int32_t *bad) {
  awaitPriorKernels();
  const int t = blockIdx.x, width = latentCols + ropeDim;
  const int row = cacheRow(layout, layout.sequences[t], layout.positions[t]);
  if (row < 0) { // the whole block
    if (threadIdx.x == 0)
      *bad = 1;
    return;
  }
  CacheT *to = cache + size_t(row) * width;
  if (!byWarp)
    normRow<false>(latent, latent, Result{nullptr, false}, gamma, eps,
                   latentCols, size_t(t) * latentCols,
                   [&](int c, float v) { storeValue(to, c, v); });
  else if (threadIdx.x < 32)
    warpNormRowOfAnyWidth(latent, gamma, eps, latentCols,
                          size_t(t) * latentCols, [&](int c, float4 v) {
                            storeValue(to, c, v.x);
                            storeValue(to, c + 1, v.y);
                            storeValue(to, c + 2, v.z);
                            storeValue(to, c + 3, v.w);
                          });
  for (int pair = threadIdx.x; pair < ropeDim / 2; pair += blockDim.x) {
    const RotatedPair r = rotatePair(key, size_t(t) * ropeDim, pair, ropeDim,
                                     interleaved, positions[t], freqs, mscale);
    storeValue(to, latentCols + r.a, r.ya);
    storeValue(to, latentCols + r.b, r.yb);
  }
}

__device__ float blockReduce(float v, bool isMax, float *scratch) {
  v = isMax ? warpMax(v) : warpSum(v);
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0)
    scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < blockDim.x / 32 ? scratch[lane] : (isMax ? -INFINITY : 0.f);
    v = isMax ? warpMax(v) : warpSum(v);
    if (lane == 0)
      scratch[0] = v;
  }
  __syncthreads();
  return scratch[0];
}

/// Every thread of the block, after each wrote its scores and kept the
/// largest it saw in `top`: scores[s] = exp(score - max); returns their sum
/// (the softmax's denominator).
__device__ float softmaxWeights(float *scores, int visible, float top,
                                float *scratch) {
  top = blockReduce(top, true, scratch);
  float total = 0.f;
  for (int s = threadIdx.x; s < visible; s += blockDim.x)
    total += scores[s] = expf(scores[s] - top);
  return blockReduce(total, false, scratch);
}

/// A block per (token, head): latent query, scores over the visible rows,
/// softmax, weighted latent, W_UV. kWarpPerRow: a warp per cached row and
/// per output, its lanes across the row (coalesced: for many queries, a
/// prefill); else a thread per row and per output (more rows in flight at
/// once: for the few blocks of a decode step).
template <bool kWarpPerRow>
__global__ void mlaKernel(const float *qNope, const float *qRope,
                          const float *cache, PagedLayout layout,
                          const float *wUk, const float *wUv, int heads,
                          int nope, int rope, int latent, int valueDim,
                          float scale, float *out, int32_t *bad) {
  awaitPriorKernels();
  extern __shared__ float shared[];
  __shared__ float scratch[32];
  float *qlat = shared, *olat = shared + latent, *scores = shared + 2 * latent;
  // The row of each visible position, after the scores (as ints).
  int t = blockIdx.x / heads, h = blockIdx.x % heads;
  int visible = layout.positions[t] + 1, width = latent + rope;
  int *rows = reinterpret_cast<int *>(scores + visible);
  if (!visibleRows(layout, layout.sequences[t], visible, rows, bad))
    return;
  const float *q = qNope + (size_t(t) * heads + h) * nope;
  const float *qr = qRope + (size_t(t) * heads + h) * rope;
  const float *uk = wUk + size_t(h) * nope * latent;
  for (int l = threadIdx.x; l < latent; l += blockDim.x) {
    float sum = 0.f;
    for (int n = 0; n < nope; ++n)
      sum += q[n] * uk[size_t(n) * latent + l];
    qlat[l] = sum;
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32,
            warps = blockDim.x / 32;
  float top = -INFINITY;
  if constexpr (kWarpPerRow) {
    for (int s = warp; s < visible; s += warps) {
      const float *row = cache + size_t(rows[s]) * width;
      float sum = 0.f;
      for (int l = lane; l < latent; l += 32)
        sum += qlat[l] * row[l];
      for (int r = lane; r < rope; r += 32)
        sum += qr[r] * row[latent + r];
      sum = warpSum(sum) * scale;
      if (lane == 0)
        scores[s] = sum;
      top = fmaxf(top, sum);
    }
  } else {
    for (int s = threadIdx.x; s < visible; s += blockDim.x) {
      const float *row = cache + size_t(rows[s]) * width;
      float sum = 0.f;
      for (int l = 0; l < latent; ++l)
        sum += qlat[l] * row[l];
      for (int r = 0; r < rope; ++r)
        sum += qr[r] * row[latent + r];
      scores[s] = sum * scale;
      top = fmaxf(top, scores[s]);
    }
  }
  float total = softmaxWeights(scores, visible, top, scratch);
  for (int l = threadIdx.x; l < latent; l += blockDim.x) {
    float sum = 0.f;
    for (int s = 0; s < visible; ++s)
      sum += scores[s] * cache[size_t(rows[s]) * width + l];
    olat[l] = sum / total;
  }
  __syncthreads();
  const float *uv = wUv + size_t(h) * valueDim * latent;
  if constexpr (kWarpPerRow) {
    for (int v = warp; v < valueDim; v += warps) {
      float sum = 0.f;
      for (int l = lane; l < latent; l += 32)
        sum += olat[l] * uv[size_t(v) * latent + l];
      sum = warpSum(sum);
      if (lane == 0)
        out[(size_t(t) * heads + h) * valueDim + v] = sum;
    }
  } else {
    for (int v = threadIdx.x; v < valueDim; v += blockDim.x) {
      float sum = 0.f;
      for (int l = 0; l < latent; ++l)
        sum += olat[l] * uv[size_t(v) * latent + l];
      out[(size_t(t) * heads + h) * valueDim + v] = sum;
    }
  }
}

/// Grid (token * choices [+ tokens: the shared expert's pairs], rows / 8):
/// a warp per row i of gate and up, lanes across the hidden dimension
/// (16-byte loads, coalesced). A shared expert's pair (blockIdx.x past
/// routedPairs) does what its linears and SiLU-mul do (ModelKernels.h).
/// kGateUpTogether: the gate and up rows' loads in flight together, and a
/// shared expert's rows asked into L2 before the wait.
/// kRoutes: the block routes its token first (moeExpertsRowwise's `route`:
/// routeInBlock on the token's logits), and the first block of each routed
/// pair writes the pair's choice and weight, which `indices` and `weights`
/// then point to.
template <typename W, bool kShared, bool kGateUpTogether, bool kRoutes>
__global__ void moeActivationKernel(const float *x, const int32_t *indices,
                                    const W *gate, const W *up, int choices,
                                    int experts, int inter, int dim, float *act,
                                    int32_t *bad, SharedRowsExpert shared,
                                    int routedPairs, int actStride,
                                    RouteInExperts route, float *weights) {
  const int pair = blockIdx.x;
  const bool isShared = kShared && pair >= routedPairs;
  const int rows = isShared ? shared.inter : inter;
  const W *gates = isShared ? static_cast<const W *>(shared.gate) : gate;
  const W *ups = isShared ? static_cast<const W *>(shared.up) : up;
  // A warp's rows: one, or with kRoutes (one wave of blocks, so that a
  // block routes once) every gridDim.y * 8-th from its first.
  const int first = blockIdx.y * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  auto eachRow = [&](auto &&body) {
    if constexpr (kRoutes) {
      for (int i = first; i < rows; i += gridDim.y * 8)
        body(i);
    } else if (first < rows) {
      body(first);
    }
  };
  // A shared expert's rows, which need no choice, towards L2 while the
  // kernel ahead (the route) still runs.
  if (kGateUpTogether && isShared && lane == 0)
    eachRow([&](int i) {
      const uint32_t rowBytes = uint32_t(dim * sizeof(W));
      const W *g = gates + size_t(i) * dim, *u = ups + size_t(i) * dim;
      if (rowBytes % 16 == 0 &&
          (reinterpret_cast<uintptr_t>(g) | reinterpret_cast<uintptr_t>(u)) %
                  16 ==
              0) {
        prefetchToL2(g, rowBytes);
        prefetchToL2(u, rowBytes);
      }
    });
  awaitPriorKernels();
  const int t = isShared ? pair - routedPairs : pair / choices;
  int e = 0;
  if constexpr (kRoutes) {
    // (Block-uniform: a pair's blocks all route, or none.)
    if (!isShared) {
      __shared__ RouteShared<kRouteInExpertsMax> routing;
      routeInBlock(route.logits + size_t(t) * experts, route.bias, experts,
                   route.config, routing);
      e = routing.expert[pair % choices];
      if (blockIdx.y == 0 && threadIdx.x == 0) {
        const_cast<int32_t *>(indices)[pair] = e;
        weights[pair] = routing.weight[pair % choices];
      }
    }
  } else if (!isShared) {
    e = expertOfPair(indices, experts, bad);
  }
  if (e < 0 || (!kRoutes && first >= rows))
    return;
  const float *xt = x + size_t(t) * dim;
  eachRow([&](int i) {
    const W *gateRow = gates + (size_t(e) * rows + i) * dim,
            *upRow = ups + (size_t(e) * rows + i) * dim;
    float a = 0.f, b = 0.f;
    if constexpr (kGateUpTogether) {
      rowPairDotParts(gateRow, upRow, xt, dim, lane, a, b);
    } else {
      a = rowDotPart(gateRow, xt, dim, lane);
      b = rowDotPart(upRow, xt, dim, lane);
    }
    a = warpSum(a), b = warpSum(b);
    if (lane != 0)
      return;
    if (!isShared) {
      act[size_t(pair) * actStride + i] =
          asOperand<W>(a / (1.f + expf(-a)) * b);
      return;
    }
    // (Unrounded here: the down product rounds its input as it reads it.)
    act[size_t(pair) * actStride + i] =
        shared.roundGateUp ? siluTimesOfBf16(a, b) : siluTimes(a, b);
  });
}

/// Grid (token * choices [+ tokens: the shared expert's pairs], dim / 8,
/// or dim / 16 with kTwoOutputs): a warp per output j of the down
/// projection (kTwoOutputs: outputs j and j + 1, both rows' loads in flight
/// together, the same sums), added into y weighted (a shared expert's
/// pair: weight 1, rounded where its linear's output is).
template <typename W, bool kShared, bool kTwoOutputs>
__global__ void moeDownKernel(const float *act, const int32_t *indices,
                              const float *weights, const W *down, int choices,
                              int experts, int inter, int dim, bool combineBf16,
                              PairOutput y, SharedRowsExpert shared,
                              int routedPairs, int actStride) {
  awaitPriorKernels();
  const int pair = blockIdx.x;
  const bool isShared = kShared && pair >= routedPairs;
  const int e = isShared ? 0 : indices[pair];
  const int len = isShared ? shared.inter : inter;
  const W *downs = isShared ? static_cast<const W *>(shared.down) : down;
  constexpr int kOutputs = kTwoOutputs ? 2 : 1;
  const int lane = threadIdx.x % 32;
  const int j = (blockIdx.y * 8 + threadIdx.x / 32) * kOutputs;
  if (e < 0 || e >= experts || j >= dim)
    return;
  const W *row = downs + (size_t(e) * dim + j) * len;
  const float *a = act + size_t(pair) * actStride;
  float sums[kOutputs] = {};
  if constexpr (kTwoOutputs) {
    if (j + 1 < dim)
      rowPairDotParts(row, row + len, a, len, lane, sums[0], sums[1]);
    else
      sums[0] = rowDotPart(row, a, len, lane);
  } else {
    sums[0] = rowDotPart(row, a, len, lane);
  }
#pragma unroll
  for (int o = 0; o < kOutputs; ++o) {
    float sum = warpSum(sums[o]);
    if (lane == 0 && j + o < dim) {
      if (isShared ? shared.roundDown : combineBf16)
        sum = __bfloat162float(__float2bfloat16(sum));
      y.addRow(pair, isShared ? pair - routedPairs : pair / choices, dim, j + o,
               (isShared ? 1.f : weights[pair]) * sum);
    }
  }
}

/// Grid (tokens, dim / 256), 256 threads: y[t, d] = the sum of the token's
/// pairs' rows of pairRows in choice order (pairs whose expert is out of
/// range wrote none).
__global__ void combinePairRowsKernel(const float *pairRows,
                                      const int32_t *indices, int choices,
                                      int experts, int dim,
                                      const float *sharedRows, float *y) {
  awaitPriorKernels();
  const int t = blockIdx.x, d = blockIdx.y * blockDim.x + threadIdx.x;
  if (d >= dim)
    return;
  float sum = 0.f;
  for (int k = 0; k < choices; ++k) {
    const int pair = t * choices + k, e = indices[pair];
    if (e >= 0 && e < experts)
      sum += pairRows[size_t(pair) * dim + d];
  }
  if (sharedRows) // the shared expert's output, added to the routed sum
    sum += sharedRows[size_t(t) * dim + d];
  y[size_t(t) * dim + d] = sum;
}

/// A block a row. kVector: four values a load (dim in 4s, x and y
/// aligned to 4 elements), kGatherLoads of them a thread in flight before
/// its stores (one scalar load at a time ran at 70% of the copy bandwidth
/// on a prefill's expert rows).
constexpr int kGatherLoads = 4;

template <bool kVector>
__global__ void gatherRowsKernel(Operand x, const int32_t *rows, int dim,
                                 const int32_t *rowsUsed, Result y) {
  awaitPriorKernels();
  if (rowsUsed && int(blockIdx.x) >= *rowsUsed)
    return;
  const size_t source = size_t(rows[blockIdx.x]) * dim;
  const size_t base = size_t(blockIdx.x) * dim;
  if constexpr (kVector) {
    const int groups = dim / 4;
    for (int g0 = threadIdx.x; g0 < groups; g0 += kGatherLoads * blockDim.x) {
      float4 v[kGatherLoads];
#pragma unroll
      for (int k = 0; k < kGatherLoads; ++k) {
        const int g = g0 + k * int(blockDim.x);
        if (g < groups)
          v[k] = load4(x, source + 4 * size_t(g));
      }
#pragma unroll
      for (int k = 0; k < kGatherLoads; ++k) {
        const int g = g0 + k * int(blockDim.x);
        if (g < groups)
          store4(y, base + 4 * size_t(g), v[k]);
      }
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
      store(y, base + i, load(x, source + i));
  }
}

/// Rows a block of gatherBf16RowsByWarpKernel, a warp each.
constexpr int kGatherWarpRows = 8;
/// 16-byte chunks of y a lane has in flight before its stores.
constexpr int kGatherWarpChunks = 8;

/// The 8 values at x[i, i + 8) as BF16 (16 bytes; F32 x rounded as
/// store4 rounds).
template <bool kBf16X>
__device__ __forceinline__ uint4 loadBf16Chunk(const void *x, size_t i) {
  if constexpr (kBf16X) {
    return *reinterpret_cast<const uint4 *>(
        static_cast<const __nv_bfloat16 *>(x) + i);
  } else {
    const float4 *from =
        reinterpret_cast<const float4 *>(static_cast<const float *>(x) + i);
    const float4 lo = from[0], hi = from[1];
    uint4 v;
    const __nv_bfloat162 p0 = __floats2bfloat162_rn(lo.x, lo.y),
                         p1 = __floats2bfloat162_rn(lo.z, lo.w),
                         p2 = __floats2bfloat162_rn(hi.x, hi.y),
                         p3 = __floats2bfloat162_rn(hi.z, hi.w);
    v.x = *reinterpret_cast<const uint32_t *>(&p0);
    v.y = *reinterpret_cast<const uint32_t *>(&p1);
    v.z = *reinterpret_cast<const uint32_t *>(&p2);
    v.w = *reinterpret_cast<const uint32_t *>(&p3);
    return v;
  }
}

/// gatherRowsKernel into BF16 y, a warp a row and 16 bytes of y a lane a
/// load, every load of a lane's kGatherWarpChunks in flight before its
/// stores (a block of 256 threads a row moved 8 bytes a thread and left
/// mini's prefill gathers at about half the copy bandwidth).
template <bool kBf16X>
__global__ void
gatherBf16RowsByWarpKernel(const void *x, const int32_t *rows, int count,
                           int dim, const int32_t *rowsUsed, __nv_bfloat16 *y) {
  awaitPriorKernels();
  const int row = int(blockIdx.x) * kGatherWarpRows + int(threadIdx.x) / 32;
  const int lane = int(threadIdx.x) % 32;
  if (row >= (rowsUsed ? min(count, *rowsUsed) : count))
    return;
  const size_t source = size_t(rows[row]) * dim;
  uint4 *to = reinterpret_cast<uint4 *>(y + size_t(row) * dim);
  const int chunks = dim / 8;
  for (int c0 = lane; c0 < chunks; c0 += 32 * kGatherWarpChunks) {
    uint4 v[kGatherWarpChunks];
#pragma unroll
    for (int k = 0; k < kGatherWarpChunks; ++k) {
      const int c = c0 + 32 * k;
      if (c < chunks)
        v[k] = loadBf16Chunk<kBf16X>(x, source + 8 * size_t(c));
    }
#pragma unroll
    for (int k = 0; k < kGatherWarpChunks; ++k) {
      const int c = c0 + 32 * k;
      if (c < chunks)
        to[c] = v[k];
    }
  }
}

/// A block per token: its choices' expert rows, weighted, summed; then
/// `plus`'s row added where given.
__global__ void combineExpertRowsKernel(Operand expertOut,
                                        const int32_t *rowOfPair,
                                        const float *weights, int choices,
                                        int dim, bool combineBf16, Operand plus,
                                        float *y) {
  awaitPriorKernels();
  int t = blockIdx.x;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float sum = 0.f;
    for (int k = 0; k < choices; ++k) {
      int pair = t * choices + k;
      if (rowOfPair[pair] < 0) // no row: its expert index was outside
        continue;
      float v = load(expertOut, size_t(rowOfPair[pair]) * dim + d);
      if (combineBf16)
        v = __bfloat162float(__float2bfloat16(v));
      sum = __fmaf_rn(weights[pair], v, sum); // (as addWeightedFour)
    }
    if (plus.data)
      sum += load(plus, size_t(t) * dim + d);
    y[size_t(t) * dim + d] = sum;
  }
}

/// The same four values a thread (dim a multiple of 4): each value's sum
/// in the same order, so the same bits, with 16-byte loads and stores (a
/// prefill's combine had run at 40% of the copy bandwidth on scalars).
/// ExpertCombine.cuh's arithmetic, which a norm's add that does the
/// combine itself (CombinedRows) shares.
__global__ void combineExpertRowsByFourKernel(Operand expertOut,
                                              const int32_t *rowOfPair,
                                              const float *weights, int choices,
                                              int dim, bool combineBf16,
                                              Operand plus, float *y) {
  awaitPriorKernels();
  const int t = blockIdx.x;
  for (int d = 4 * threadIdx.x; d < dim; d += 4 * blockDim.x) {
    float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int k = 0; k < choices; ++k) {
      const int pair = t * choices + k;
      const int row = rowOfPair[pair];
      if (row < 0) // no row: its expert index was outside
        continue;
      addWeightedFour(sum, load4(expertOut, size_t(row) * dim + d),
                      weights[pair], combineBf16);
    }
    const size_t at = size_t(t) * dim + d;
    if (plus.data)
      addFour(sum, load4(plus, at));
    *reinterpret_cast<float4 *>(y + at) = sum;
  }
}

/// The better of two (value, index) candidates into (value, index): the
/// larger value, the lower index on ties; index INT_MAX: none (NaNs are
/// never candidates).
__device__ __forceinline__ void keepBetter(float &value, int &index,
                                           float otherValue, int otherIndex) {
  if (otherIndex != INT_MAX && (index == INT_MAX || otherValue > value ||
                                (otherValue == value && otherIndex < index))) {
    value = otherValue;
    index = otherIndex;
  }
}

/// The warp's best candidate, in every lane.
__device__ __forceinline__ void warpBest(float &value, int &index) {
  for (int offset = 16; offset > 0; offset >>= 1)
    keepBetter(value, index, __shfl_xor_sync(0xffffffffu, value, offset),
               __shfl_xor_sync(0xffffffffu, index, offset));
}

/// Grid (parts, rows), kArgmaxThreads threads: the best (value, index) of
/// part blockIdx.x of a row (`span` values, a multiple of 4) into
/// partials. Each thread keeps the best of its strided values (indices
/// rise within a thread: a tie keeps the earlier one), 8 loads in flight,
/// 16 bytes each where the row is aligned; then the block's best. A
/// 129280-word vocabulary in one block was a chain of L2 round trips and
/// one multiprocessor's compares: 12 us of a decode step.
constexpr int kArgmaxThreads = 256, kArgmaxLoads = 8;
constexpr int kArgmaxMaxParts = 64,
              kArgmaxSpanMin = 4 * kArgmaxLoads * kArgmaxThreads;
__global__ void __launch_bounds__(kArgmaxThreads)
    argmaxPartsKernel(const float *logits, int vocab, int span,
                      float *partValues, int32_t *partIndices) {
  awaitPriorKernels();
  const float *row = logits + size_t(blockIdx.y) * vocab;
  const int begin = blockIdx.x * span, end = min(vocab, begin + span);
  float best = -INFINITY;
  int at = INT_MAX;
  auto consider = [&](float v, int i) {
    if (!isnan(v) && (at == INT_MAX || v > best)) {
      best = v;
      at = i;
    }
  };
  if (reinterpret_cast<uintptr_t>(row + begin) % 16 == 0 &&
      (end - begin) % 4 == 0) {
    const float4 *quads = reinterpret_cast<const float4 *>(row + begin);
    const int count = (end - begin) / 4;
    for (int base = threadIdx.x; base < count;
         base += kArgmaxLoads * kArgmaxThreads) {
      float4 v[kArgmaxLoads];
#pragma unroll
      for (int u = 0; u < kArgmaxLoads; ++u) {
        const int i = base + u * kArgmaxThreads;
        v[u] = i < count ? quads[i] : make_float4(NAN, NAN, NAN, NAN);
      }
#pragma unroll
      for (int u = 0; u < kArgmaxLoads; ++u) {
        const int i = begin + 4 * (base + u * kArgmaxThreads);
        consider(v[u].x, i);
        consider(v[u].y, i + 1);
        consider(v[u].z, i + 2);
        consider(v[u].w, i + 3);
      }
    }
  } else {
    for (int base = begin + threadIdx.x; base < end;
         base += kArgmaxLoads * kArgmaxThreads) {
      float v[kArgmaxLoads];
#pragma unroll
      for (int u = 0; u < kArgmaxLoads; ++u) {
        const int i = base + u * kArgmaxThreads;
        v[u] = i < end ? row[i] : NAN;
      }
#pragma unroll
      for (int u = 0; u < kArgmaxLoads; ++u)
        consider(v[u], base + u * kArgmaxThreads);
    }
  }
  warpBest(best, at);
  __shared__ float values[kArgmaxThreads / 32];
  __shared__ int indices[kArgmaxThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    values[warp] = best;
    indices[warp] = at;
  }
  __syncthreads();
  if (warp != 0)
    return;
  best = lane < kArgmaxThreads / 32 ? values[lane] : -INFINITY;
  at = lane < kArgmaxThreads / 32 ? indices[lane] : INT_MAX;
  warpBest(best, at);
  if (lane == 0) {
    const size_t slot = size_t(blockIdx.y) * gridDim.x + blockIdx.x;
    partValues[slot] = best;
    partIndices[slot] = at;
  }
}

/// A warp per row: the best of its parts' candidates (none: vocab - 1).
__global__ void argmaxFinishKernel(const float *partValues,
                                   const int32_t *partIndices, int parts,
                                   int vocab, int32_t *ids) {
  awaitPriorKernels();
  const int lane = threadIdx.x;
  float best = -INFINITY;
  int at = INT_MAX;
  for (int p = lane; p < parts; p += 32) {
    const size_t slot = size_t(blockIdx.x) * parts + p;
    keepBetter(best, at, partValues[slot], partIndices[slot]);
  }
  warpBest(best, at);
  if (lane == 0)
    ids[blockIdx.x] = at == INT_MAX ? vocab - 1 : at;
}

/// The parts a row is read in: enough blocks for the multiprocessors, none
/// shorter than kArgmaxSpanMin values; spans in 4s.
int argmaxParts(int rows, int vocab) {
  const int wanted = std::max(1, 264 / std::max(rows, 1));
  const int most = (vocab + kArgmaxSpanMin - 1) / kArgmaxSpanMin;
  return std::clamp(std::min(wanted, most), 1, kArgmaxMaxParts);
}
int argmaxSpan(int vocab, int parts) {
  return ((vocab + parts - 1) / parts + 3) / 4 * 4;
}

} // namespace

size_t melt::rt::cuda::argmaxScratchWords(int rows, int vocab) {
  return 2 * size_t(std::max(rows, 0)) * argmaxParts(rows, vocab);
}

cudaError_t melt::rt::cuda::argmaxRows(const float *logits, int rows, int vocab,
                                       int32_t *ids, void *scratch,
                                       cudaStream_t stream) {
  if (rows < 0 || vocab <= 0)
    return cudaErrorInvalidValue;
  if (rows == 0)
    return cudaSuccess;
  const int parts = argmaxParts(rows, vocab);
  const int span = argmaxSpan(vocab, parts);
  float *values = static_cast<float *>(scratch);
  int32_t *indices = reinterpret_cast<int32_t *>(values + size_t(rows) * parts);
  launchOverlapped(argmaxPartsKernel, dim3(parts, rows), kArgmaxThreads, 0,
                   stream, logits, vocab, span, values, indices);
  launchOverlapped(argmaxFinishKernel, rows, 32, 0, stream, values, indices,
                   parts, vocab, ids);
  return cudaGetLastError();
}

template <typename CacheT>
cudaError_t melt::rt::cuda::cacheAppend(const float *first, const float *second,
                                        const PagedLayout &layout, int tokens,
                                        int a, int b, CacheT *cache,
                                        int32_t *bad, cudaStream_t stream) {
  if (tokens == 0)
    return cudaSuccess;
  launchOverlapped(cacheAppendKernel<CacheT>, tokens, 256, 0, stream, first,
                   second, layout, a, b, cache, bad);
  return cudaGetLastError();
}

template <typename CacheT>
cudaError_t melt::rt::cuda::appendLatent(
    Operand latent, Operand gamma, float eps, int latentCols, Operand key,
    const int32_t *positions, int ropeDim, bool interleaved,
    const RopeFrequencies &freqs, double mscale, const PagedLayout &layout,
    int tokens, CacheT *cache, int32_t *bad, cudaStream_t stream) {
  if (latentCols <= 0 || ropeDim % 2 != 0 || ropeDim / 2 > kMaxRopePairs)
    return cudaErrorInvalidValue;
  if (tokens == 0)
    return cudaSuccess;
  return launchOverlapped(
      appendLatentKernel<CacheT>, tokens, kNormThreads, 0, stream, latent,
      gamma, eps, latentCols, normRowsByWarp(tokens, latentCols, latent), key,
      positions, ropeDim, interleaved, freqs, mscale, layout, cache, bad);
}

namespace melt::rt::cuda {
#define MELT_CACHE_WRITERS(CacheT)                                             \
  template cudaError_t cacheAppend(const float *, const float *,               \
                                   const PagedLayout &, int, int, int,         \
                                   CacheT *, int32_t *, cudaStream_t);         \
  template cudaError_t appendLatent(                                           \
      Operand, Operand, float, int, Operand, const int32_t *, int, bool,       \
      const RopeFrequencies &, double, const PagedLayout &, int, CacheT *,     \
      int32_t *, cudaStream_t);
MELT_CACHE_WRITERS(float)
MELT_CACHE_WRITERS(__nv_bfloat16)
#undef MELT_CACHE_WRITERS
} // namespace melt::rt::cuda

size_t melt::rt::cuda::mlaF32SharedBytes(int latent, int maxVisible) {
  // Latent query and output, then a score and a row index per position.
  return (2 * size_t(latent) + 2 * size_t(maxVisible)) * sizeof(float);
}

namespace {
template <typename Kernel>
cudaError_t allowSharedBytes(Kernel kernel, size_t shared) {
  if (shared <= 48 * 1024)
    return cudaSuccess;
  return cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared));
}
} // namespace

cudaError_t melt::rt::cuda::mlaF32(const float *qNope, const float *qRope,
                                   const float *cache,
                                   const PagedLayout &layout, const float *wUk,
                                   const float *wUv, int tokens, int heads,
                                   int nope, int rope, int latent, int valueDim,
                                   int maxVisible, float scale, float *out,
                                   int32_t *bad, cudaStream_t stream) {
  if (tokens == 0)
    return cudaSuccess;
  size_t shared = mlaF32SharedBytes(latent, maxVisible);
  // Measured on the H200 (mini, 16 heads): a thread per row is faster for
  // a decode step's few blocks, a warp per row for a prefill's many.
  auto kernel =
      tokens > kMlaWarpPerRowTokens ? mlaKernel<true> : mlaKernel<false>;
  if (cudaError_t e = allowSharedBytes(kernel, shared); e != cudaSuccess)
    return e;
  launchOverlapped(kernel, tokens * heads, 128, shared, stream, qNope, qRope,
                   cache, layout, wUk, wUv, heads, nope, rope, latent, valueDim,
                   scale, out, bad);
  return cudaGetLastError();
}

namespace {

/// A block per (token, head): scores over the visible rows in shared
/// memory, softmax, the weighted values.
__global__ void attentionKernel(const float *q, const float *cache,
                                PagedLayout layout, int heads, int kvHeads,
                                int keyDim, int valueDim, bool causal,
                                float scale, float *out, int32_t *bad) {
  awaitPriorKernels();
  extern __shared__ float shared[];
  __shared__ float scratch[32];
  int t = blockIdx.x / heads, h = blockIdx.x % heads;
  int b = layout.sequences[t];
  int visible = causal ? layout.positions[t] + 1 : layout.lengths[b];
  int width = kvHeads * (keyDim + valueDim), kh = h / (heads / kvHeads);
  float *scores = shared;
  int *rows = reinterpret_cast<int *>(shared + visible);
  if (!visibleRows(layout, b, visible, rows, bad))
    return;
  const float *qv = q + (size_t(t) * heads + h) * keyDim;
  float top = -INFINITY;
  for (int s = threadIdx.x; s < visible; s += blockDim.x) {
    const float *k = cache + size_t(rows[s]) * width + size_t(kh) * keyDim;
    float sum = 0.f;
    for (int d = 0; d < keyDim; ++d)
      sum += qv[d] * k[d];
    scores[s] = sum * scale;
    top = fmaxf(top, scores[s]);
  }
  float total = softmaxWeights(scores, visible, top, scratch);
  size_t valueOffset = size_t(kvHeads) * keyDim + size_t(kh) * valueDim;
  for (int v = threadIdx.x; v < valueDim; v += blockDim.x) {
    float sum = 0.f;
    for (int s = 0; s < visible; ++s)
      sum += scores[s] * cache[size_t(rows[s]) * width + valueOffset + v];
    out[(size_t(t) * heads + h) * valueDim + v] = sum / total;
  }
}

/// A thread per (token, tile).
__global__ void quantizeBlocksKernel(const float *x, int tokens, int cols,
                                     int block, int blocks, uint8_t *q,
                                     float *scales) {
  awaitPriorKernels();
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= tokens * blocks)
    return;
  int t = i / blocks, c0 = (i % blocks) * block;
  int c1 = min(cols, c0 + block);
  const float *row = x + size_t(t) * cols;
  float amax = 0.f;
  for (int c = c0; c < c1; ++c)
    amax = fmaxf(amax, fabsf(row[c]));
  float scale = blockScale(amax);
  scales[i] = scale;
  for (int c = c0; c < c1; ++c)
    q[size_t(t) * cols + c] = uint8_t(e4m3Code(row[c], scale));
}

/// A warp per (token, 128-value block), 4 values a lane (cols a multiple
/// of 4, rows 16-byte aligned): the same arithmetic, coalesced.
__global__ void quantizeBlocksOf128Kernel(const float *x, int tokens, int cols,
                                          int blocks, uint8_t *q,
                                          float *scales) {
  awaitPriorKernels();
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= tokens * blocks)
    return;
  const int t = warp / blocks, c = (warp % blocks) * 128 + 4 * lane;
  const bool inside = c < cols;
  const size_t at = size_t(t) * cols + c;
  const float4 v = inside ? *reinterpret_cast<const float4 *>(x + at)
                          : make_float4(0.f, 0.f, 0.f, 0.f);
  const float scale = warpBlockScale(v);
  if (lane == 0)
    scales[warp] = scale;
  if (!inside)
    return;
  const float values[4] = {v.x, v.y, v.z, v.w};
  uint32_t packed = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i)
    packed |= e4m3Code(values[i], scale) << (8 * i);
  *reinterpret_cast<uint32_t *>(q + at) = packed;
}

/// A thread per 4 values (cols and block multiples of 4).
__global__ void dequantizeBlocksByFourKernel(const uint8_t *q,
                                             const float *scales, int tokens,
                                             int cols, int block, int blocks,
                                             float *y) {
  awaitPriorKernels();
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= size_t(tokens) * cols / 4)
    return;
  const int t = int(4 * i / cols), c = int(4 * i % cols);
  const float scale = scales[size_t(t) * blocks + c / block];
  const uint32_t codes = reinterpret_cast<const uint32_t *>(q)[i];
  float v[4];
  e4m3Values(codes, v);
  reinterpret_cast<float4 *>(y)[i] =
      make_float4(v[0] * scale, v[1] * scale, v[2] * scale, v[3] * scale);
}

__global__ void dequantizeBlocksKernel(const uint8_t *q, const float *scales,
                                       int tokens, int cols, int block,
                                       int blocks, float *y) {
  awaitPriorKernels();
  size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= size_t(tokens) * cols)
    return;
  int t = int(i / cols), c = int(i % cols);
  y[i] = e4m3Value(q[i]) * scales[size_t(t) * blocks + c / block];
}

/// Grid-stride over the elements, 4 a thread (cols a multiple of 4).
__global__ void widenFp8BlocksKernel(const uint8_t *q, const float *scales,
                                     int rows, int cols, __nv_bfloat16 *y) {
  awaitPriorKernels();
  const int colBlocks = (cols + 127) / 128;
  const size_t quads = size_t(rows) * cols / 4;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < quads;
       i += size_t(gridDim.x) * blockDim.x) {
    const size_t first = 4 * i;
    const int r = int(first / cols), c = int(first % cols);
    const float scale = scales[size_t(r / 128) * colBlocks + c / 128];
    const uint32_t codes = reinterpret_cast<const uint32_t *>(q)[i];
    float v[4];
    e4m3Values(codes, v);
    __nv_bfloat16 out[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
      out[j] = __float2bfloat16(v[j] * scale);
    reinterpret_cast<uint2 *>(y)[i] = *reinterpret_cast<const uint2 *>(out);
  }
}

} // namespace

cudaError_t melt::rt::cuda::widenFp8Blocks(const uint8_t *q,
                                           const float *scales, int rows,
                                           int cols, __nv_bfloat16 *y,
                                           cudaStream_t stream) {
  if (cols % 4 != 0)
    return cudaErrorInvalidValue;
  const size_t quads = size_t(rows) * cols / 4;
  if (quads == 0)
    return cudaSuccess;
  const unsigned blocks = unsigned(std::min<size_t>((quads + 255) / 256, 4096));
  launchOverlapped(widenFp8BlocksKernel, blocks, 256, 0, stream, q, scales,
                   rows, cols, y);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::attentionF32(const float *q, const float *cache,
                                         const PagedLayout &layout, int tokens,
                                         int heads, int kvHeads, int keyDim,
                                         int valueDim, bool causal,
                                         int maxVisible, float scale,
                                         float *out, int32_t *bad,
                                         cudaStream_t stream) {
  if (tokens == 0)
    return cudaSuccess;
  size_t shared = 2 * size_t(maxVisible) * sizeof(float);
  if (cudaError_t e = allowSharedBytes(attentionKernel, shared);
      e != cudaSuccess)
    return e;
  launchOverlapped(attentionKernel, tokens * heads, 128, shared, stream, q,
                   cache, layout, heads, kvHeads, keyDim, valueDim, causal,
                   scale, out, bad);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::quantizeBlocks(const float *x, int tokens, int cols,
                                           int block, uint8_t *q, float *scales,
                                           cudaStream_t stream) {
  int blocks = (cols + block - 1) / block, n = tokens * blocks;
  if (n == 0)
    return cudaSuccess;
  if (block == 128 && cols % 4 == 0 &&
      reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(q) % 4 == 0)
    launchOverlapped(quantizeBlocksOf128Kernel, (n + 7) / 8, 256, 0, stream, x,
                     tokens, cols, blocks, q, scales);
  else
    launchOverlapped(quantizeBlocksKernel, (n + 127) / 128, 128, 0, stream, x,
                     tokens, cols, block, blocks, q, scales);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::dequantizeBlocks(const uint8_t *q,
                                             const float *scales, int tokens,
                                             int cols, int block, float *y,
                                             cudaStream_t stream) {
  size_t n = size_t(tokens) * cols;
  if (n == 0)
    return cudaSuccess;
  int blocks = (cols + block - 1) / block;
  if (cols % 4 == 0 && block % 4 == 0 &&
      reinterpret_cast<uintptr_t>(q) % 4 == 0 &&
      reinterpret_cast<uintptr_t>(y) % 16 == 0)
    launchOverlapped(dequantizeBlocksByFourKernel,
                     unsigned((n / 4 + 255) / 256), 256, 0, stream, q, scales,
                     tokens, cols, block, blocks, y);
  else
    launchOverlapped(dequantizeBlocksKernel, unsigned((n + 255) / 256), 256, 0,
                     stream, q, scales, tokens, cols, block, blocks, y);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::startPairOutput(float *y, const float *pairRows,
                                            int tokens, int dim,
                                            cudaStream_t stream) {
  return pairRows ? cudaSuccess
                  : cudaMemsetAsync(y, 0, size_t(tokens) * dim * sizeof(float),
                                    stream);
}

cudaError_t melt::rt::cuda::finishPairOutput(float *y, const float *pairRows,
                                             const int32_t *indices, int tokens,
                                             int choices, int experts, int dim,
                                             cudaStream_t stream,
                                             const float *sharedRows) {
  if (!pairRows || tokens == 0 || dim == 0)
    return cudaGetLastError();
  return launchOverlapped(
      combinePairRowsKernel, dim3(tokens, (dim + 255) / 256), 256, 0, stream,
      pairRows, indices, choices, experts, dim, sharedRows, y);
}

cudaError_t melt::rt::cuda::moeExpertsRowwise(
    const float *x, const int32_t *indices, const float *weights,
    const void *gate, const void *up, const void *down, bool bf16Weights,
    int tokens, int choices, int experts, int inter, int dim, bool combineBf16,
    float *scratch, float *y, int32_t *bad, cudaStream_t stream,
    float *pairRows, const SharedRowsExpert *shared, bool gateUpTogether,
    bool downPairs, const RouteInExperts *route) {
  if (route && (!routesInExpertsFit(experts, route->config) ||
                route->config.topK != choices))
    return cudaErrorInvalidValue;
  if (shared && (!bf16Weights || shared->inter <= 0 || !shared->gate ||
                 !shared->up || !shared->down))
    return cudaErrorInvalidValue;
  if (cudaError_t e = startPairOutput(y, pairRows, tokens, dim, stream);
      e != cudaSuccess || tokens == 0)
    return e;
  const PairOutput out{y, pairRows};
  const SharedRowsExpert sharedExpert = shared ? *shared : SharedRowsExpert{};
  const RouteInExperts routing = route ? *route : RouteInExperts{};
  const int routedPairs = tokens * choices,
            pairs = routedPairs + (shared ? tokens : 0),
            rows = std::max(inter, sharedExpert.inter);
  dim3 activations(pairs, (rows + 7) / 8);
  dim3 outputs(pairs, downPairs ? (dim + 15) / 16 : (dim + 7) / 8);
  // (The kernels without a shared expert are their own instances: the code
  // of the routed experts alone as before.)
  auto launch = [&](auto weight, auto withShared) {
    using W = decltype(weight);
    constexpr bool kShared = decltype(withShared)::value;
    // Routing in the gate/up kernel: one wave of blocks, each routing once
    // and taking its share of its pair's rows (in waves, each wave's blocks
    // would route again before their first loads).
    dim3 gateUpGrid = activations;
    if (route)
      gateUpGrid.y = unsigned(std::clamp(
          residentBlocks(moeActivationKernel<W, kShared, true, true>, 256, 0) /
              pairs,
          1, int(activations.y)));
    launchOverlapped(
        route            ? moeActivationKernel<W, kShared, true, true>
        : gateUpTogether ? moeActivationKernel<W, kShared, true, false>
                         : moeActivationKernel<W, kShared, false, false>,
        gateUpGrid, 256, 0, stream, x, indices, static_cast<const W *>(gate),
        static_cast<const W *>(up), choices, experts, inter, dim, scratch, bad,
        sharedExpert, routedPairs, rows, routing, const_cast<float *>(weights));
    launchOverlapped(downPairs ? moeDownKernel<W, kShared, true>
                               : moeDownKernel<W, kShared, false>,
                     outputs, 256, 0, stream, scratch, indices, weights,
                     static_cast<const W *>(down), choices, experts, inter, dim,
                     combineBf16, out, sharedExpert, routedPairs, rows);
  };
  if (bf16Weights && shared)
    launch(__nv_bfloat16{}, std::true_type{});
  else if (bf16Weights)
    launch(__nv_bfloat16{}, std::false_type{});
  else
    launch(float{}, std::false_type{});
  return finishPairOutput(
      y, pairRows, indices, tokens, choices, experts, dim, stream,
      shared && pairRows ? pairRows + size_t(routedPairs) * dim : nullptr);
}

cudaError_t melt::rt::cuda::gatherRows(Operand x, const int32_t *rows,
                                       int count, int dim, Result y,
                                       cudaStream_t stream,
                                       const int32_t *rowsUsed) {
  if (count == 0)
    return cudaSuccess;
  auto aligned16 = [](const void *p) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
  };
  static const bool byWarp = envSwitch("MELT_CUDA_GATHER_ROWS_BY_WARP", true);
  if (byWarp && y.bf16 && dim % 8 == 0 && aligned16(x.data) &&
      aligned16(y.data)) {
    const int blocks = (count + kGatherWarpRows - 1) / kGatherWarpRows;
    auto *to = static_cast<__nv_bfloat16 *>(y.data);
    if (x.bf16)
      launchOverlapped(gatherBf16RowsByWarpKernel<true>, blocks,
                       32 * kGatherWarpRows, 0, stream, x.data, rows, count,
                       dim, rowsUsed, to);
    else
      launchOverlapped(gatherBf16RowsByWarpKernel<false>, blocks,
                       32 * kGatherWarpRows, 0, stream, x.data, rows, count,
                       dim, rowsUsed, to);
  } else if (dim % 4 == 0 && alignedFor4(x.data, x.bf16) &&
             alignedFor4(y.data, y.bf16)) {
    launchOverlapped(gatherRowsKernel<true>, count, 256, 0, stream, x, rows,
                     dim, rowsUsed, y);
  } else {
    launchOverlapped(gatherRowsKernel<false>, count, 256, 0, stream, x, rows,
                     dim, rowsUsed, y);
  }
  return cudaGetLastError();
}

cudaError_t
melt::rt::cuda::combineExpertRows(Operand expertOut, const int32_t *rowOfPair,
                                  const float *weights, int tokens, int choices,
                                  int dim, bool combineBf16, float *y,
                                  cudaStream_t stream, Operand plus) {
  if (tokens == 0)
    return cudaSuccess;
  auto aligned = [](const void *p) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
  };
  const bool byFour = dim % 4 == 0 && aligned(expertOut.data) && aligned(y) &&
                      (!plus.data || aligned(plus.data));
  if (byFour)
    launchOverlapped(combineExpertRowsByFourKernel, tokens,
                     std::min(256, std::max(32, (dim / 4 + 31) / 32 * 32)), 0,
                     stream, expertOut, rowOfPair, weights, choices, dim,
                     combineBf16, plus, y);
  else
    launchOverlapped(combineExpertRowsKernel, tokens, 256, 0, stream, expertOut,
                     rowOfPair, weights, choices, dim, combineBf16, plus, y);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::embedding(const int32_t *ids, int tokens,
                                      Operand table, int vocab, int hidden,
                                      Result y, int32_t *badId,
                                      cudaStream_t stream) {
  if (tokens == 0)
    return cudaSuccess;
  launchOverlapped(embeddingKernel, tokens, 256, 0, stream, ids, table, vocab,
                   hidden, y, badId);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::rope(Operand x, const int32_t *positions,
                                 int tokens, int rows, int dim,
                                 bool interleaved, const RopeFrequencies &freqs,
                                 double mscale, Result y, cudaStream_t stream) {
  if (dim % 2 != 0 || dim / 2 > kMaxRopePairs)
    return cudaErrorInvalidValue;
  const size_t tokenPairs = size_t(tokens) * (dim / 2);
  if (tokenPairs == 0 || rows <= 0)
    return cudaSuccess;
  // Every row of a token in one thread where the tokens' pairs alone fill
  // the GPU (a prefill); else a thread per row (a decode step's few).
  const int rowsPerThread = tokenPairs >= 32768 ? rows : 1;
  const dim3 grid(unsigned((tokenPairs + 255) / 256),
                  unsigned((rows + rowsPerThread - 1) / rowsPerThread));
  launchOverlapped(ropeKernel, grid, 256, 0, stream, x, positions, tokens, rows,
                   dim, interleaved, freqs, mscale, rowsPerThread, y);
  return cudaGetLastError();
}

bool melt::rt::cuda::routesInExpertsFit(int experts,
                                        const RouterConfig &config) {
  return experts >= 1 && experts <= kRouteInExpertsMax && config.nGroup >= 1 &&
         config.nGroup <= kMaxRouterGroups &&
         config.nGroup <= kRouteInExpertsMax && config.topK >= 1 &&
         config.topK <= kMaxRouterTopK && config.topK <= experts &&
         experts % config.nGroup == 0;
}

cudaError_t melt::rt::cuda::routeExperts(const float *logits, const float *bias,
                                         int tokens, int experts,
                                         const RouterConfig &config,
                                         int32_t *indices, float *weights,
                                         cudaStream_t stream) {
  if (experts < 1 || experts > kMaxRouterExperts ||
      config.nGroup > kMaxRouterGroups || config.topK > kMaxRouterTopK ||
      config.topK > experts || config.nGroup < 1 ||
      experts % config.nGroup != 0)
    return cudaErrorInvalidValue;
  if (tokens == 0)
    return cudaSuccess;
  // A thread per expert (and per group), whole warps.
  const int threads = (std::max(experts, config.nGroup) + 31) / 32 * 32;
  launchOverlapped(routeKernel, tokens, threads, 0, stream, logits, bias,
                   experts, config, indices, weights);
  return cudaGetLastError();
}
