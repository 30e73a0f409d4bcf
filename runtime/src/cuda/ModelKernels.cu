//===- ModelKernels.cu - the model's F32 kernels (CUDA) ------------------===//
#include "cuda/ModelKernels.h"

#include "cuda/BlockQuantize.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/E4m3.cuh"
#include "cuda/ExpertPairs.cuh"
#include "cuda/OperandAccess.cuh"
#include "cuda/PagedCache.cuh"
#include "cuda/RowNorm.cuh"
#include "cuda/VectorLoads.cuh"
#include "cuda/WarpReduce.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <climits>
#include <type_traits>

using namespace melt::rt::cuda;

namespace {

__global__ void embeddingKernel(const int32_t *ids, Operand table, int vocab,
                                int hidden, Result y, int32_t *badId) {
  awaitPriorKernels();
  int t = blockIdx.x;
  int id = ids[t];
  bool valid = id >= 0 && id < vocab;
  if (!valid && threadIdx.x == 0)
    *badId = 1;
  for (int h = threadIdx.x; h < hidden; h += blockDim.x)
    store(y, size_t(t) * hidden + h,
          valid ? load(table, size_t(id) * hidden + h) : 0.f);
}

/// Pair `pair` of a row of `dim` rotary values: its two columns, and
/// their values rotated at `position` (the rope kernel's and the latent
/// append's arithmetic, the same bits).
struct RotatedPair {
  int a, b;
  float ya, yb;
};
__device__ __forceinline__ RotatedPair
rotatePair(Operand x, size_t base, int pair, int dim, bool interleaved,
           int32_t position, const RopeFrequencies &freqs, double mscale) {
  const int half = dim / 2;
  double s, c;
  sincos(double(position) * freqs.inverse[pair], &s, &c);
  c *= mscale;
  s *= mscale;
  RotatedPair r;
  r.a = interleaved ? 2 * pair : pair;
  r.b = interleaved ? 2 * pair + 1 : pair + half;
  float xa = load(x, base + r.a), xb = load(x, base + r.b);
  r.ya = float(xa * c - xb * s);
  r.yb = float(xb * c + xa * s);
  return r;
}

/// One thread per rotated pair.
__global__ void ropeKernel(Operand x, const int32_t *positions, int rows,
                           int dim, bool interleaved, RopeFrequencies freqs,
                           double mscale, size_t pairs, Result y) {
  awaitPriorKernels();
  size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= pairs)
    return;
  int half = dim / 2;
  int pair = int(i % half);
  size_t row = i / half; // token * rows + r
  int token = int(row / rows);
  size_t base = row * dim;
  const RotatedPair r = rotatePair(x, base, pair, dim, interleaved,
                                   positions[token], freqs, mscale);
  store(y, base + r.a, r.ya);
  store(y, base + r.b, r.yb);
}

/// The better of two (value, index) candidates: the larger value, ties to
/// the lower index (routeToken's stable order); index INT_MAX: none.
__device__ __forceinline__ void keepBetter(float &value, int &index,
                                           float otherValue, int otherIndex) {
  if (otherIndex == INT_MAX)
    return;
  if (index == INT_MAX || otherValue > value ||
      (otherValue == value && otherIndex < index)) {
    value = otherValue;
    index = otherIndex;
  }
}

/// The warp's best candidate, in every lane.
__device__ __forceinline__ void warpBest(float &value, int &index) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    float v = __shfl_xor_sync(0xffffffffu, value, offset);
    int i = __shfl_xor_sync(0xffffffffu, index, offset);
    keepBetter(value, index, v, i);
  }
}

/// One warp per token, as routeToken chooses: scores (softmax or sigmoid),
/// the bias for choosing, the topk_group best groups (a lane per group),
/// then top k rounds of a warp-wide argmax, weights from the scores.
__global__ void routeKernel(const float *logits, const float *bias, int experts,
                            RouterConfig cfg, int32_t *indices,
                            float *weights) {
  awaitPriorKernels();
  __shared__ float scores[kMaxRouterExperts], choice[kMaxRouterExperts];
  __shared__ bool taken[kMaxRouterExperts];
  __shared__ int32_t chosen[64];
  const int lane = threadIdx.x;
  const float *row = logits + size_t(blockIdx.x) * experts;
  float top = -INFINITY;
  for (int e = lane; e < experts; e += 32) {
    scores[e] = cfg.sigmoid ? 1.f / (1.f + expf(-row[e])) : row[e];
    top = fmaxf(top, scores[e]);
    taken[e] = false;
  }
  if (!cfg.sigmoid) {
    top = warpMax(top);
    float sum = 0.f;
    for (int e = lane; e < experts; e += 32)
      sum += scores[e] = expf(scores[e] - top);
    sum = warpSum(sum);
    for (int e = lane; e < experts; e += 32)
      scores[e] /= sum;
  }
  for (int e = lane; e < experts; e += 32)
    choice[e] = scores[e] + (bias && cfg.method == 2 ? bias[e] : 0.f);
  __syncwarp();
  const int perGroup = experts / cfg.nGroup;
  if (cfg.method != 0 && cfg.nGroup > 1) {
    // Lanes g and g + 32 score group g and g + 32.
    float groupScore[2];
    bool keep[2] = {false, false};
    for (int j = 0; j < 2; ++j) {
      int g = lane + 32 * j;
      float first = -INFINITY, second = -INFINITY;
      for (int e = g * perGroup; g < cfg.nGroup && e < (g + 1) * perGroup;
           ++e) {
        float v = choice[e];
        if (v > first) {
          second = first;
          first = v;
        } else if (v > second) {
          second = v;
        }
      }
      groupScore[j] =
          cfg.method == 2 ? first + (perGroup > 1 ? second : 0.f) : first;
    }
    for (int k = 0; k < cfg.topkGroup; ++k) {
      float value = -INFINITY;
      int index = INT_MAX;
      for (int j = 0; j < 2; ++j) {
        int g = lane + 32 * j;
        if (g < cfg.nGroup && !keep[j])
          keepBetter(value, index, groupScore[j], g);
      }
      warpBest(value, index);
      for (int j = 0; j < 2; ++j)
        if (index == lane + 32 * j)
          keep[j] = true;
    }
    for (int j = 0; j < 2; ++j) {
      int g = lane + 32 * j;
      if (g < cfg.nGroup && !keep[j])
        for (int e = g * perGroup; e < (g + 1) * perGroup; ++e)
          choice[e] = -INFINITY;
    }
    __syncwarp();
  }
  for (int k = 0; k < cfg.topK; ++k) {
    float value = -INFINITY;
    int index = INT_MAX;
    for (int e = lane; e < experts; e += 32)
      if (!taken[e])
        keepBetter(value, index, choice[e], e);
    warpBest(value, index);
    if (lane == 0) {
      taken[index] = true;
      chosen[k] = index;
    }
    __syncwarp();
  }
  if (lane != 0)
    return;
  double sum = 0;
  for (int k = 0; k < cfg.topK; ++k)
    sum += scores[chosen[k]];
  for (int k = 0; k < cfg.topK; ++k) {
    double w = scores[chosen[k]];
    if (cfg.normalize)
      w /= sum + 1e-20;
    indices[size_t(blockIdx.x) * cfg.topK + k] = chosen[k];
    weights[size_t(blockIdx.x) * cfg.topK + k] = float(w * cfg.scale);
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

__global__ void cacheAppendKernel(const float *first, const float *second,
                                  PagedLayout layout, int a, int b,
                                  float *cache, int32_t *bad) {
  awaitPriorKernels();
  int t = blockIdx.x, width = a + b;
  int row = cacheRow(layout, layout.sequences[t], layout.positions[t]);
  if (row < 0) {
    if (threadIdx.x == 0)
      *bad = 1;
    return;
  }
  for (int i = threadIdx.x; i < width; i += blockDim.x)
    cache[size_t(row) * width + i] =
        i < a ? first[size_t(t) * a + i] : second[size_t(t) * b + i - a];
}

/// A token a block (kNormThreads threads): its latent normalized into its
/// cache row, then its key rotated after it.
__global__ void __launch_bounds__(kNormThreads)
    appendLatentKernel(Operand latent, Operand gamma, float eps, int latentCols,
                       Operand key, const int32_t *positions, int ropeDim,
                       bool interleaved, RopeFrequencies freqs, double mscale,
                       PagedLayout layout, float *cache, int32_t *bad) {
  awaitPriorKernels();
  const int t = blockIdx.x, width = latentCols + ropeDim;
  const int row = cacheRow(layout, layout.sequences[t], layout.positions[t]);
  if (row < 0) { // the whole block
    if (threadIdx.x == 0)
      *bad = 1;
    return;
  }
  float *to = cache + size_t(row) * width;
  normRow<false>(latent, latent, Result{nullptr, false}, gamma, eps, latentCols,
                 size_t(t) * latentCols, [&](int c, float v) { to[c] = v; });
  for (int pair = threadIdx.x; pair < ropeDim / 2; pair += blockDim.x) {
    const RotatedPair r = rotatePair(key, size_t(t) * ropeDim, pair, ropeDim,
                                     interleaved, positions[t], freqs, mscale);
    to[latentCols + r.a] = r.ya;
    to[latentCols + r.b] = r.yb;
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

/// Grid (token * choices, inter / 8): a warp per row i of gate and up,
/// lanes across the hidden dimension (16-byte loads, coalesced).
template <typename W>
__global__ void moeActivationKernel(const float *x, const int32_t *indices,
                                    const W *gate, const W *up, int choices,
                                    int experts, int inter, int dim, float *act,
                                    int32_t *bad) {
  awaitPriorKernels();
  int pair = blockIdx.x, t = pair / choices;
  int e = expertOfPair(indices, experts, bad);
  int i = blockIdx.y * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (e < 0 || i >= inter)
    return;
  const float *xt = x + size_t(t) * dim;
  float a =
      warpSum(rowDotPart(gate + (size_t(e) * inter + i) * dim, xt, dim, lane));
  float b =
      warpSum(rowDotPart(up + (size_t(e) * inter + i) * dim, xt, dim, lane));
  if (lane == 0)
    act[size_t(pair) * inter + i] = asOperand<W>(a / (1.f + expf(-a)) * b);
}

/// Grid (token * choices, dim / 8): a warp per output j of the down
/// projection, added into y weighted.
template <typename W>
__global__ void moeDownKernel(const float *act, const int32_t *indices,
                              const float *weights, const W *down, int choices,
                              int experts, int inter, int dim, bool combineBf16,
                              PairOutput y) {
  awaitPriorKernels();
  int pair = blockIdx.x;
  int e = indices[pair];
  int j = blockIdx.y * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (e < 0 || e >= experts || j >= dim)
    return;
  float sum = warpSum(rowDotPart(down + (size_t(e) * dim + j) * inter,
                                 act + size_t(pair) * inter, inter, lane));
  if (lane == 0) {
    if (combineBf16)
      sum = __bfloat162float(__float2bfloat16(sum));
    y.add(pair, choices, dim, j, weights[pair] * sum);
  }
}

/// Grid (tokens, dim / 256), 256 threads: y[t, d] = the sum of the token's
/// pairs' rows of pairRows in choice order (pairs whose expert is out of
/// range wrote none).
__global__ void combinePairRowsKernel(const float *pairRows,
                                      const int32_t *indices, int choices,
                                      int experts, int dim, float *y) {
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
  y[size_t(t) * dim + d] = sum;
}

__global__ void gatherRowsKernel(const float *x, const int32_t *rows, int dim,
                                 Result y) {
  awaitPriorKernels();
  const float *source = x + size_t(rows[blockIdx.x]) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x)
    store(y, size_t(blockIdx.x) * dim + i, source[i]);
}

/// A block per token: its choices' expert rows, weighted, summed.
__global__ void combineExpertRowsKernel(const float *expertOut,
                                        const int32_t *rowOfPair,
                                        const float *weights, int choices,
                                        int dim, bool combineBf16, float *y) {
  awaitPriorKernels();
  int t = blockIdx.x;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float sum = 0.f;
    for (int k = 0; k < choices; ++k) {
      int pair = t * choices + k;
      float v = expertOut[size_t(rowOfPair[pair]) * dim + d];
      if (combineBf16)
        v = __bfloat162float(__float2bfloat16(v));
      sum += weights[pair] * v;
    }
    y[size_t(t) * dim + d] = sum;
  }
}

/// A block per row: each thread keeps the best (value, index) of its
/// strided values (4 loads in flight), then the block keeps the best of
/// those: the larger value, the lower index on ties; NaNs never taken.
constexpr int kArgmaxThreads = 512;
__global__ void __launch_bounds__(kArgmaxThreads)
    argmaxRowsKernel(const float *logits, int vocab, int32_t *ids) {
  awaitPriorKernels();
  const float *row = logits + size_t(blockIdx.x) * vocab;
  float best = -INFINITY;
  int at = INT_MAX;
  for (int base = threadIdx.x; base < vocab; base += 4 * kArgmaxThreads) {
    float v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      int i = base + u * kArgmaxThreads;
      v[u] = i < vocab ? row[i] : NAN;
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      int i = base + u * kArgmaxThreads;
      // Indices rise within a thread: a tie keeps the earlier one.
      if (!isnan(v[u]) && (at == INT_MAX || v[u] > best)) {
        best = v[u];
        at = i;
      }
    }
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    float v = __shfl_xor_sync(0xffffffffu, best, offset);
    int i = __shfl_xor_sync(0xffffffffu, at, offset);
    if (i != INT_MAX && (at == INT_MAX || v > best || (v == best && i < at))) {
      best = v;
      at = i;
    }
  }
  __shared__ float values[kArgmaxThreads / 32];
  __shared__ int indices[kArgmaxThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    values[warp] = best;
    indices[warp] = at;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kArgmaxThreads / 32; ++w)
      if (indices[w] != INT_MAX &&
          (indices[0] == INT_MAX || values[w] > values[0] ||
           (values[w] == values[0] && indices[w] < indices[0]))) {
        values[0] = values[w];
        indices[0] = indices[w];
      }
    ids[blockIdx.x] = indices[0] == INT_MAX ? vocab - 1 : indices[0];
  }
}

} // namespace

cudaError_t melt::rt::cuda::argmaxRows(const float *logits, int rows, int vocab,
                                       int32_t *ids, cudaStream_t stream) {
  if (rows < 0 || vocab <= 0)
    return cudaErrorInvalidValue;
  if (rows == 0)
    return cudaSuccess;
  launchOverlapped(argmaxRowsKernel, rows, kArgmaxThreads, 0, stream, logits,
                   vocab, ids);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::cacheAppend(const float *first, const float *second,
                                        const PagedLayout &layout, int tokens,
                                        int a, int b, float *cache,
                                        int32_t *bad, cudaStream_t stream) {
  if (tokens == 0)
    return cudaSuccess;
  launchOverlapped(cacheAppendKernel, tokens, 256, 0, stream, first, second,
                   layout, a, b, cache, bad);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::appendLatent(
    Operand latent, Operand gamma, float eps, int latentCols, Operand key,
    const int32_t *positions, int ropeDim, bool interleaved,
    const RopeFrequencies &freqs, double mscale, const PagedLayout &layout,
    int tokens, float *cache, int32_t *bad, cudaStream_t stream) {
  if (latentCols <= 0 || ropeDim % 2 != 0 || ropeDim / 2 > kMaxRopePairs)
    return cudaErrorInvalidValue;
  if (tokens == 0)
    return cudaSuccess;
  return launchOverlapped(appendLatentKernel, tokens, kNormThreads, 0, stream,
                          latent, gamma, eps, latentCols, key, positions,
                          ropeDim, interleaved, freqs, mscale, layout, cache,
                          bad);
}

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
                                             cudaStream_t stream) {
  if (!pairRows || tokens == 0 || dim == 0)
    return cudaGetLastError();
  return launchOverlapped(combinePairRowsKernel,
                          dim3(tokens, (dim + 255) / 256), 256, 0, stream,
                          pairRows, indices, choices, experts, dim, y);
}

cudaError_t melt::rt::cuda::moeExpertsRowwise(
    const float *x, const int32_t *indices, const float *weights,
    const void *gate, const void *up, const void *down, bool bf16Weights,
    int tokens, int choices, int experts, int inter, int dim, bool combineBf16,
    float *scratch, float *y, int32_t *bad, cudaStream_t stream,
    float *pairRows) {
  if (cudaError_t e = startPairOutput(y, pairRows, tokens, dim, stream);
      e != cudaSuccess || tokens == 0)
    return e;
  const PairOutput out{y, pairRows};
  dim3 activations(tokens * choices, (inter + 7) / 8);
  dim3 outputs(tokens * choices, (dim + 7) / 8);
  if (bf16Weights) {
    using B = __nv_bfloat16;
    launchOverlapped(moeActivationKernel<B>, activations, 256, 0, stream, x,
                     indices, static_cast<const B *>(gate),
                     static_cast<const B *>(up), choices, experts, inter, dim,
                     scratch, bad);
    launchOverlapped(moeDownKernel<B>, outputs, 256, 0, stream, scratch,
                     indices, weights, static_cast<const B *>(down), choices,
                     experts, inter, dim, combineBf16, out);
  } else {
    launchOverlapped(moeActivationKernel<float>, activations, 256, 0, stream, x,
                     indices, static_cast<const float *>(gate),
                     static_cast<const float *>(up), choices, experts, inter,
                     dim, scratch, bad);
    launchOverlapped(moeDownKernel<float>, outputs, 256, 0, stream, scratch,
                     indices, weights, static_cast<const float *>(down),
                     choices, experts, inter, dim, combineBf16, out);
  }
  return finishPairOutput(y, pairRows, indices, tokens, choices, experts, dim,
                          stream);
}

cudaError_t melt::rt::cuda::gatherRows(const float *x, const int32_t *rows,
                                       int count, int dim, Result y,
                                       cudaStream_t stream) {
  if (count == 0)
    return cudaSuccess;
  launchOverlapped(gatherRowsKernel, count, 256, 0, stream, x, rows, dim, y);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::combineExpertRows(const float *expertOut,
                                              const int32_t *rowOfPair,
                                              const float *weights, int tokens,
                                              int choices, int dim,
                                              bool combineBf16, float *y,
                                              cudaStream_t stream) {
  if (tokens == 0)
    return cudaSuccess;
  launchOverlapped(combineExpertRowsKernel, tokens, 256, 0, stream, expertOut,
                   rowOfPair, weights, choices, dim, combineBf16, y);
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
  size_t pairs = size_t(tokens) * rows * (dim / 2);
  if (pairs == 0)
    return cudaSuccess;
  launchOverlapped(ropeKernel, unsigned((pairs + 255) / 256), 256, 0, stream, x,
                   positions, rows, dim, interleaved, freqs, mscale, pairs, y);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::routeExperts(const float *logits, const float *bias,
                                         int tokens, int experts,
                                         const RouterConfig &config,
                                         int32_t *indices, float *weights,
                                         cudaStream_t stream) {
  if (experts > kMaxRouterExperts || config.nGroup > 64 || config.topK > 64)
    return cudaErrorInvalidValue;
  if (tokens == 0)
    return cudaSuccess;
  launchOverlapped(routeKernel, tokens, 32, 0, stream, logits, bias, experts,
                   config, indices, weights);
  return cudaGetLastError();
}
