//===- MlaDecodeFused.cu - a few tokens' MLA in one kernel ----------------===//
#include "cuda/MlaDecodeFused.h"

#include "EnvSwitch.h"

#include "cuda/AsyncCopy.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/PagedCache.cuh"
#include "cuda/RopeRotation.cuh"
#include "cuda/WarpReduce.cuh"

#include <cooperative_groups.h>

#include <cmath>

using namespace melt::rt::cuda;
namespace cg = cooperative_groups;

namespace {

/// Blocks per (token, head), latent columns, the share of them a block
/// multiplies, and the widest nope, rope and value rows taken.
constexpr int kCluster = 8, kThreads = 256, kLatent = 512;
constexpr int kSlice = kLatent / kCluster;
constexpr int kMaxNope = 128, kMaxRope = 64, kMaxValue = 128;
/// Threads per latent column of the absorb (each over a quarter of nope),
/// and the nope rows each adds.
constexpr int kAbsorbParts = kThreads / kSlice;
constexpr int kAbsorbRows = kMaxNope / kAbsorbParts;
/// Values of W_UV's product per warp (a warp per value at a time).
constexpr int kValuesPerWarp = kMaxValue / (kThreads / 32);
/// Cached positions a block scores at most.
constexpr int kMaxPerBlock = kMlaFusedMaxVisible / kCluster;

static_assert(kSlice == 64, "a W_UV row's share: two values a lane");
static_assert(kAbsorbParts * kAbsorbRows == kMaxNope, "nope split evenly");

struct FusedArgs {
  const float *qNope, *qRope;
  const __nv_bfloat16 *cache;
  PagedLayout layout;
  const float *wUk, *wUv;
  int heads, nope, rope, value;
  float scale;
  float *out;
};

__device__ __forceinline__ float roundedToBf16(float v) {
  return __bfloat162float(__float2bfloat16(v));
}

/// One halving of a warp's sums: lanes whose bit 2 * kHalf is set keep
/// the upper kHalf of d[0 .. 2 kHalf), the others the lower, each adding
/// its partner's copy of them into d[0 .. kHalf).
template <int kHalf>
__device__ __forceinline__ void halveSums(float *d, int lane) {
  const bool upper = lane & (2 * kHalf);
#pragma unroll
  for (int i = 0; i < kHalf; ++i) {
    const float keep = upper ? d[i + kHalf] : d[i];
    const float send = upper ? d[i] : d[i + kHalf];
    d[i] = keep + __shfl_xor_sync(0xffffffffu, send, 2 * kHalf);
  }
}

/// The block's weights: W_UK[h][n][lBase + column] for a quarter of nope
/// (column = tid % 64, part = tid / 64) and W_UV[h][v][lBase .. + 63] (two
/// values a lane) for the warp's values v (warp + 8 j).
__device__ __forceinline__ void
loadBlockWeights(const FusedArgs &a, int h, int lBase, int tid,
                 float (&wk)[kAbsorbRows], float (&wv)[kValuesPerWarp][2]) {
  const int column = tid % kSlice, part = tid / kSlice;
  const int warp = tid / 32, lane = tid % 32;
#pragma unroll
  for (int i = 0; i < kAbsorbRows; ++i) {
    const int n = part * kAbsorbRows + i;
    wk[i] = n < a.nope
                ? a.wUk[(size_t(h) * a.nope + n) * kLatent + lBase + column]
                : 0.f;
  }
#pragma unroll
  for (int j = 0; j < kValuesPerWarp; ++j) {
    const int v = warp + 8 * j;
    const float *row = a.wUv + (size_t(h) * a.value + v) * kLatent + lBase;
    wv[j][0] = v < a.value ? row[lane] : 0.f;
    wv[j][1] = v < a.value ? row[lane + 32] : 0.f;
  }
}

/// Token t, head h's query into shared memory: q_nope (zeros past nope),
/// and the rope part rounded to BF16 into rope[0 .. rope) (rotated here
/// from the projection's rows where given).
__device__ __forceinline__ void loadQuery(const FusedArgs &a,
                                          const ProjectedQuery &projected,
                                          bool fromProjection, int t, int h,
                                          int tid, float *qNope, float *rope) {
  const size_t th = size_t(t) * a.heads + h;
  const int projectedRow = a.nope + a.rope;
  for (int i = tid; i < kMaxNope; i += kThreads)
    qNope[i] = i >= a.nope      ? 0.f
               : fromProjection ? load(Operand{projected.q, projected.bf16},
                                       th * projectedRow + i)
                                : a.qNope[th * a.nope + i];
  if (fromProjection) {
    for (int pair = tid; pair < a.rope / 2; pair += kThreads) {
      const RotatedPair r = rotatePair(
          Operand{projected.q, projected.bf16}, th * projectedRow + a.nope,
          pair, a.rope, projected.interleaved, projected.positions[t],
          projected.freqs, projected.mscale);
      rope[r.a] = roundedToBf16(r.ya);
      rope[r.b] = roundedToBf16(r.yb);
    }
  } else {
    for (int i = tid; i < a.rope; i += kThreads)
      rope[i] = roundedToBf16(a.qRope[th * a.rope + i]);
  }
}

/// The block's 64 columns of the absorbed query, rounded to BF16, into
/// slice (after the barrier ahead of it, which shows qNope): each thread's
/// quarter of nope times its W_UK values, the quarters added in order.
__device__ __forceinline__ void absorbSlice(const float *qNope,
                                            const float (&wk)[kAbsorbRows],
                                            int tid, float (*absorbed)[kSlice],
                                            float *slice) {
  const int column = tid % kSlice, part = tid / kSlice;
  float acc = 0.f;
#pragma unroll
  for (int i = 0; i < kAbsorbRows; ++i)
    acc += qNope[part * kAbsorbRows + i] * wk[i];
  absorbed[part][column] = acc;
  __syncthreads();
  if (tid < kSlice) {
    float sum = 0.f;
#pragma unroll
    for (int p = 0; p < kAbsorbParts; ++p)
      sum += absorbed[p][tid];
    slice[tid] = roundedToBf16(sum);
  }
}

/// The softmax's weights of the scores in weight[0, count) (in place),
/// against their maximum `top` over the block, and their sum, in every
/// thread (blockReduce's barriers: every weight seen after it).
__device__ __forceinline__ float
exponentiate(float *weight, int count, float top, float *reduced, int tid) {
  float total = 0.f;
  for (int p = tid; p < count; p += kThreads) {
    const float e = top == -INFINITY ? 0.f : expf(weight[p] - top);
    weight[p] = e;
    total += e;
  }
  return blockReduce<false>(total, reduced);
}

/// W_UV's product of the block's 64 merged latent columns for every value
/// into products (kHalvingSums: the warp's 16 values' sums over its lanes
/// together, each exchange halving the sums a lane holds, 16 shuffles, not
/// 16 sums of 5, so that lane l ends with value j = l / 2's; else a
/// warpSum for each value); then, once the cluster's blocks all have
/// theirs, block `rank`'s share of the values added over the cluster in
/// rank order into out.
template <bool kHalvingSums>
__device__ __forceinline__ void
valueProducts(cg::cluster_group &cluster, const FusedArgs &a,
              const float *merged, const float (&wv)[kValuesPerWarp][2],
              int rank, int tid, size_t th, float *products) {
  const int warp = tid / 32, lane = tid % 32;
  static_assert(kValuesPerWarp == 16, "four halvings, then a pair");
  float d[kValuesPerWarp];
#pragma unroll
  for (int j = 0; j < kValuesPerWarp; ++j)
    d[j] = merged[lane] * wv[j][0] + merged[lane + 32] * wv[j][1];
  if constexpr (kHalvingSums) {
    halveSums<8>(d, lane);
    halveSums<4>(d, lane);
    halveSums<2>(d, lane);
    halveSums<1>(d, lane);
    d[0] += __shfl_xor_sync(0xffffffffu, d[0], 1);
    const int v = warp + 8 * (lane / 2);
    if (lane % 2 == 0 && v < a.value)
      products[v] = d[0];
  } else {
#pragma unroll
    for (int j = 0; j < kValuesPerWarp; ++j) {
      const int v = warp + 8 * j;
      const float sum = warpSum(d[j]);
      if (lane == 0 && v < a.value)
        products[v] = sum;
    }
  }
  cluster.sync(); // every block's products are there
  const int perRank = (a.value + kCluster - 1) / kCluster;
  if (tid < perRank) {
    const int v = rank * perRank + tid;
    if (v < a.value) {
      float sum = 0.f;
      for (int r = 0; r < kCluster; ++r)
        sum += cluster.map_shared_rank(products, r)[v];
      a.out[th * a.value + v] = sum;
    }
  }
  cluster.sync(); // no block leaves while another reads its memory
}

/// Grid (kCluster, heads, tokens), clusters of kCluster blocks along x:
/// block `rank` of (token t, head h) absorbs latent columns rank * 64 ..
/// + 63 of the query, scores its share of the cached positions against the
/// whole query (gathered from the cluster), merges the cluster's partial
/// sums for its 64 columns and multiplies them by its rows of W_UV; the
/// cluster then adds the values' partial products.
template <bool kHalvingSums>
__global__ void __cluster_dims__(kCluster, 1, 1) __launch_bounds__(kThreads)
    mlaDecodeFusedKernel(FusedArgs a, ProjectedQuery projected,
                         bool fromProjection, MlaEarlyReads early) {
  const bool queryEarly = early == MlaEarlyReads::Query,
             cacheEarly = early == MlaEarlyReads::Cache;
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = int(cluster.block_rank());
  const int h = blockIdx.y, t = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int lBase = rank * kSlice;

  // The block's weights into registers while the kernel ahead runs.
  float wk[kAbsorbRows], wv[kValuesPerWarp][2];
  loadBlockWeights(a, h, lBase, tid, wk, wv);
  // The step's layout was written before its kernels: read before the
  // wait where the kernel ahead is known (either of the early reads).
  if (early == MlaEarlyReads::None)
    awaitPriorKernels();

  // This block's share of the visible positions and the place of each
  // one's row (a thread a position, kept in a register until the query is
  // done: their loads under the query's).
  const int visible = a.layout.positions[t] + 1;
  const int seq = a.layout.sequences[t];
  const int per = (visible + kCluster - 1) / kCluster;
  const int begin = rank * per;
  // (A position past the table has no page; kMaxPerBlock bounds a table
  // of kMlaFusedMaxVisible.)
  const int count =
      min(kMaxPerBlock, max(0, min(visible, begin + per) - begin));
  const int width = kLatent + a.rope;
  static_assert(kMaxPerBlock <= kThreads, "a thread a position");
  const int myRow = tid < count ? cacheRow(a.layout, seq, begin + tid) : -1;
  // The cache appended before the kernel ahead: the rows towards L2 while
  // the query's projection ends (a bulk prefetch: rows of whole 16 bytes).
  if (cacheEarly && myRow >= 0 && width * sizeof(__nv_bfloat16) % 16 == 0)
    prefetchToL2(a.cache + size_t(myRow) * width,
                 uint32_t(width * sizeof(__nv_bfloat16)));
  if (cacheEarly)
    awaitPriorKernels();

  // The query: q_nope for the absorb; the rope part rounded to BF16 (each
  // block rotates or copies it itself).
  __shared__ float qNope[kMaxNope];
  __shared__ __align__(16) float query[kLatent + kMaxRope];
  __shared__ float absorbed[kAbsorbParts][kSlice];
  __shared__ float slice[kSlice];
  const size_t th = size_t(t) * a.heads + h;
  loadQuery(a, projected, fromProjection, t, h, tid, qNope, query + kLatent);
  __syncthreads();
  absorbSlice(qNope, wk, tid, absorbed, slice);
  cluster.sync(); // every block's slice of the latent query is there
  for (int i = tid; i < kLatent; i += kThreads)
    query[i] = cluster.map_shared_rank(slice, i / kSlice)[i % kSlice];
  __syncthreads();

  // Scores (a warp a row), their maximum, the weights and their sum, the
  // weighted latent rows. The cache append's row is among them: its kernel
  // ended before this.
  __shared__ float weight[kMaxPerBlock];
  __shared__ int rowOf[kMaxPerBlock];
  __shared__ float reduced[kThreads / 32];
  if (tid < count)
    rowOf[tid] = myRow;
  if (queryEarly)
    awaitPriorKernels();
  __syncthreads();
  for (int p = warp; p < count; p += kThreads / 32) {
    const int row = rowOf[p];
    float dot = 0.f;
    if (row >= 0) {
      const __nv_bfloat162 *pairs = reinterpret_cast<const __nv_bfloat162 *>(
          a.cache + size_t(row) * width);
      for (int j = lane; j < width / 2; j += 32) {
        const float2 v = __bfloat1622float2(pairs[j]);
        dot += query[2 * j] * v.x + query[2 * j + 1] * v.y;
      }
    }
    dot = warpSum(dot);
    if (lane == 0)
      weight[p] = row >= 0 ? dot * a.scale : -INFINITY;
  }
  __syncthreads();
  float top = -INFINITY;
  for (int p = tid; p < count; p += kThreads)
    top = fmaxf(top, weight[p]);
  top = blockReduce<true>(top, reduced);
  const float total = exponentiate(weight, count, top, reduced, tid);
  // The rows' values four at a time, loaded before they are summed (the
  // same sums in the same order: a row without a place adds 0).
  constexpr int kRowsInFlight = 4;
  float o0 = 0.f, o1 = 0.f;
  for (int p0 = 0; p0 < count; p0 += kRowsInFlight) {
    float v0[kRowsInFlight], v1[kRowsInFlight];
#pragma unroll
    for (int u = 0; u < kRowsInFlight; ++u) {
      const int row = p0 + u < count ? rowOf[p0 + u] : -1;
      const __nv_bfloat16 *cached = a.cache + size_t(max(row, 0)) * width;
      v0[u] = row >= 0 ? __bfloat162float(cached[tid]) : 0.f;
      v1[u] = row >= 0 ? __bfloat162float(cached[tid + kThreads]) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kRowsInFlight; ++u)
      if (p0 + u < count && rowOf[p0 + u] >= 0) {
        o0 += weight[p0 + u] * v0[u];
        o1 += weight[p0 + u] * v1[u];
      }
  }
  __shared__ float partial[kLatent];
  __shared__ float stats[2];
  partial[tid] = o0;
  partial[tid + kThreads] = o1;
  if (tid == 0) {
    stats[0] = top;
    stats[1] = total;
  }
  cluster.sync(); // every block's partial sums are there

  // This block's 64 latent columns, merged over the cluster's blocks by
  // their maxima, then its share of W_UV's product for every value.
  __shared__ float merged[kSlice];
  if (tid < kSlice) {
    float best = -INFINITY;
    for (int r = 0; r < kCluster; ++r)
      best = fmaxf(best, cluster.map_shared_rank(stats, r)[0]);
    float sum = 0.f, value = 0.f;
    for (int r = 0; r < kCluster; ++r) {
      const float *s = cluster.map_shared_rank(stats, r);
      const float f = s[0] == -INFINITY ? 0.f : expf(s[0] - best);
      sum += s[1] * f;
      value += cluster.map_shared_rank(partial, r)[lBase + tid] * f;
    }
    merged[tid] = sum > 0.f ? value / sum : 0.f;
  }
  __syncthreads();
  __shared__ float products[kMaxValue];
  // (MELT_CUDA_MLA_HALVING_SUMS=0: a warpSum for each value.)
  valueProducts<kHalvingSums>(cluster, a, merged, wv, rank, tid, th, products);
}

/// The latent-slices form (MlaFusedForm::LatentSlices): rope 64 and at
/// most kSlicesMaxVisible positions. The blocks of a cluster split the
/// latent columns for the attention too, not the positions: block `rank`
/// stages its 64 latent columns and 8 rope columns of every visible row
/// (one round of 16-byte copies, read twice from shared memory), scores
/// them against its slice of the absorbed query (which it computed itself:
/// no query gathered over the cluster), and the cluster adds each row's
/// eight partial scores in rank order (every block the same sums, the same
/// softmax); each block then weighs its own columns of the rows, so that
/// no partial latent sums are merged, and W_UV's product is as above. Two
/// cluster exchanges where the form above has three.
constexpr int kSliceRope = 8;                // rope columns a block (64 over 8)
constexpr int kSliceChunks = kSlice / 8 + 1; // 16-byte pieces a row
constexpr int kSlicesMaxVisible = 512;
/// Threads per staged row while scoring (a piece each, lane 0 of the
/// eight also the rope's), rows scored at once, and the row groups of the
/// weighted columns.
constexpr int kScoreLanes = 8, kScoreRows = kThreads / kScoreLanes;
constexpr int kColumnParts = kThreads / kSlice;
static_assert(kSliceChunks - 1 == kScoreLanes, "a latent piece a lane");

/// Dynamic shared memory of the latent-slices form for tables of
/// `maxVisible` positions: the staged pieces, then the partial scores, the
/// weights and the rows' places.
__host__ __device__ constexpr size_t slicesSharedBytes(int maxVisible) {
  return size_t(maxVisible) * kSliceChunks * 16 +
         size_t(maxVisible) * (2 * sizeof(float) + sizeof(int));
}

__global__ void __cluster_dims__(kCluster, 1, 1) __launch_bounds__(kThreads)
    mlaDecodeSlicesKernel(FusedArgs a, ProjectedQuery projected,
                          bool fromProjection, int maxVisible) {
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = int(cluster.block_rank());
  const int h = blockIdx.y, t = blockIdx.z;
  const int tid = threadIdx.x;
  const int lBase = rank * kSlice;

  // The block's weights into registers while the kernel ahead runs.
  const int column = tid % kSlice, part = tid / kSlice;
  float wk[kAbsorbRows], wv[kValuesPerWarp][2];
  loadBlockWeights(a, h, lBase, tid, wk, wv);
  awaitPriorKernels();

  extern __shared__ __align__(16) uint8_t slicesShared[];
  auto *pieces = reinterpret_cast<__nv_bfloat16 *>(slicesShared);
  auto *partial = reinterpret_cast<float *>(
      slicesShared + size_t(maxVisible) * kSliceChunks * 16);
  float *weight = partial + maxVisible;
  int *rowOf = reinterpret_cast<int *>(weight + maxVisible);
  __shared__ float qNope[kMaxNope];
  __shared__ float qRope[kMaxRope];
  __shared__ float qSlice[kSlice];
  __shared__ float parts[kColumnParts][kSlice];
  __shared__ float merged[kSlice];
  __shared__ float products[kMaxValue];
  __shared__ float reduced[kThreads / 32];

  // Every visible position's row, then this block's pieces of them (a row
  // without a page: zeros, its weight 0 below).
  const int visible = min(a.layout.positions[t] + 1, maxVisible);
  const int seq = a.layout.sequences[t];
  const int width = kLatent + a.rope;
  for (int p = tid; p < visible; p += kThreads)
    rowOf[p] = cacheRow(a.layout, seq, p);
  __syncthreads();
  for (int i = tid; i < visible * kSliceChunks; i += kThreads) {
    const int p = i / kSliceChunks, c = i % kSliceChunks;
    uint8_t *to = slicesShared + size_t(i) * 16;
    const int row = rowOf[p];
    if (row < 0) {
      *reinterpret_cast<uint4 *>(to) = make_uint4(0, 0, 0, 0);
      continue;
    }
    const int first =
        c < kScoreLanes ? lBase + 8 * c : kLatent + rank * kSliceRope;
    copyAsync16(to, a.cache + size_t(row) * width + first);
  }
  commitCopies();

  // The query under the copies, and this block's 64 columns of its
  // absorbed form (no other block's needed).
  const size_t th = size_t(t) * a.heads + h;
  loadQuery(a, projected, fromProjection, t, h, tid, qNope, qRope);
  __syncthreads();
  absorbSlice(qNope, wk, tid, parts, qSlice);
  awaitCopies<0>();
  __syncthreads(); // the pieces and the query's slice are there

  // Each row's partial score over the block's columns: eight lanes a row,
  // a piece each, summed by three exchanges.
  const int piece = tid % kScoreLanes;
  for (int p0 = 0; p0 < visible; p0 += kScoreRows) {
    const int p = p0 + tid / kScoreLanes;
    float dot = 0.f;
    if (p < visible) {
      const __nv_bfloat16 *at = pieces + size_t(p) * kSliceChunks * 8;
#pragma unroll
      for (int e = 0; e < 8; e += 2) {
        const float2 v = __bfloat1622float2(
            *reinterpret_cast<const __nv_bfloat162 *>(at + 8 * piece + e));
        dot += qSlice[8 * piece + e] * v.x + qSlice[8 * piece + e + 1] * v.y;
      }
      if (piece == 0) {
#pragma unroll
        for (int e = 0; e < kSliceRope; e += 2) {
          const float2 v =
              __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(
                  at + 8 * kScoreLanes + e));
          dot += qRope[rank * kSliceRope + e] * v.x +
                 qRope[rank * kSliceRope + e + 1] * v.y;
        }
      }
    }
#pragma unroll
    for (int o = 1; o < kScoreLanes; o *= 2)
      dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (p < visible && piece == 0)
      partial[p] = dot;
  }
  cluster.sync(); // every block's partial scores are there

  // Each row's score, the eight partials added in rank order (the same
  // bits in every block), their maximum, the weights and their sum.
  float top = -INFINITY;
  for (int p = tid; p < visible; p += kThreads) {
    float parts8[kCluster];
#pragma unroll
    for (int r = 0; r < kCluster; ++r)
      parts8[r] = cluster.map_shared_rank(partial, r)[p];
    float score = 0.f;
#pragma unroll
    for (int r = 0; r < kCluster; ++r)
      score += parts8[r];
    score = rowOf[p] >= 0 ? score * a.scale : -INFINITY;
    weight[p] = score;
    top = fmaxf(top, score);
  }
  top = blockReduce<true>(top, reduced);
  const float total = exponentiate(weight, visible, top, reduced, tid);

  // The block's 64 columns of the weighted rows: a column a thread, the
  // rows in kColumnParts interleaved parts, added in order.
  float o = 0.f;
  for (int p = part; p < visible; p += kColumnParts)
    o += weight[p] *
         __bfloat162float(pieces[size_t(p) * kSliceChunks * 8 + column]);
  parts[part][column] = o;
  __syncthreads();
  if (tid < kSlice) {
    float sum = 0.f;
#pragma unroll
    for (int q = 0; q < kColumnParts; ++q)
      sum += parts[q][tid];
    merged[tid] = total > 0.f ? sum / total : 0.f;
  }
  __syncthreads();
  // W_UV's product of the block's columns, as mlaDecodeFusedKernel's.
  valueProducts<true>(cluster, a, merged, wv, rank, tid, th, products);
}

} // namespace

bool melt::rt::cuda::mlaDecodeFusedFits(const MlaSplitShape &s) {
  return s.latent == kLatent && s.rope > 0 && s.rope <= kMaxRope &&
         s.rope % 2 == 0 && s.nope > 0 && s.nope <= kMaxNope &&
         s.valueDim > 0 && s.valueDim <= kMaxValue && s.tokens >= 1 &&
         s.tokens <= kMlaFusedMaxTokens && s.maxVisible >= 1 &&
         s.maxVisible <= kMlaFusedMaxVisible && s.heads >= 1 &&
         s.heads <= 65535;
}

cudaError_t melt::rt::cuda::mlaDecodeFused(
    const float *qNope, const float *qRope, const __nv_bfloat16 *cache,
    const PagedLayout &layout, const float *wUk, const float *wUv,
    const MlaSplitShape &s, float scale, float *out, cudaStream_t stream,
    const ProjectedQuery *projected, MlaEarlyReads early, MlaFusedForm form) {
  if (!mlaDecodeFusedFits(s) || layout.batch != s.tokens ||
      (!projected && (!qNope || !qRope)))
    return cudaErrorInvalidValue;
  const FusedArgs a{qNope,   qRope,  cache,  layout,     wUk,   wUv,
                    s.heads, s.nope, s.rope, s.valueDim, scale, out};
  const ProjectedQuery query = projected ? *projected : ProjectedQuery{};
  const MlaEarlyReads reads = projected ? early : MlaEarlyReads::None;
  static const bool slicesByDefault =
      envSwitch("MELT_CUDA_MLA_LATENT_SLICES", true);
  const bool slicesFit = s.rope == kCluster * kSliceRope &&
                         s.maxVisible <= kSlicesMaxVisible &&
                         reads == MlaEarlyReads::None;
  if (form == MlaFusedForm::LatentSlices && !slicesFit)
    return cudaErrorInvalidValue;
  if (slicesFit && (form == MlaFusedForm::LatentSlices ||
                    (form == MlaFusedForm::Chosen && slicesByDefault))) {
    static const cudaError_t configured = [] {
      const cudaError_t e = cudaFuncSetAttribute(
          mlaDecodeSlicesKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
          int(slicesSharedBytes(kSlicesMaxVisible)));
      if (e != cudaSuccess)
        (void)cudaGetLastError(); // not sticky: the other form runs
      return e;
    }();
    if (configured == cudaSuccess)
      return launchOverlapped(
          mlaDecodeSlicesKernel,
          dim3(kCluster, unsigned(s.heads), unsigned(s.tokens)), kThreads,
          slicesSharedBytes(s.maxVisible), stream, a, query,
          projected != nullptr, s.maxVisible);
    if (form == MlaFusedForm::LatentSlices)
      return configured;
  }
  static const bool halving = envSwitch("MELT_CUDA_MLA_HALVING_SUMS", true);
  return launchOverlapped(
      halving ? mlaDecodeFusedKernel<true> : mlaDecodeFusedKernel<false>,
      dim3(kCluster, unsigned(s.heads), unsigned(s.tokens)), kThreads, 0,
      stream, a, query, projected != nullptr, reads);
}
