//===- MlaDecompressed.cu - a long prefill's MLA with K and V per head ----===//
#include "cuda/MlaDecompressed.h"

#include "EnvSwitch.h"
#include "cuda/CausalAttention.h"
#include "cuda/DependentLaunch.cuh"
#include "cuda/Elementwise.h"
#include "cuda/PagedCache.cuh"
#include "cuda/WarpReduce.cuh"

#include <algorithm>
#include <cmath>
#include <map>
#include <type_traits>

using namespace melt::rt::cuda;

namespace {

/// Runs whose cached rows one gather takes, side by side: run i's rows
/// [rowStart[i], rowStart[i + 1]) of the matrices are its sequence's
/// positions 0 .. reach - 1.
struct GatherRuns {
  int count = 0;
  int sequence[kCausalMaxRuns];
  int rowStart[kCausalMaxRuns + 1];
};

/// runs[begin, end)'s cached rows side by side (at most kCausalMaxRuns).
GatherRuns gatherOf(const std::vector<DecompressedQueries> &runs, size_t begin,
                    size_t end) {
  GatherRuns gather;
  gather.rowStart[0] = 0;
  for (size_t i = begin; i < end; ++i, ++gather.count) {
    gather.sequence[gather.count] = runs[i].sequence;
    gather.rowStart[gather.count + 1] =
        gather.rowStart[gather.count] + runs[i].position + runs[i].count;
  }
  return gather;
}

/// The cache row of gathered row r (blockIdx.x) of `runs`: -1 where its
/// position has no page (then *bad is set).
__device__ __forceinline__ int gatheredCacheRow(const PagedLayout &layout,
                                                const GatherRuns &runs, int r,
                                                int32_t *bad) {
  int i = 0;
  while (r >= runs.rowStart[i + 1])
    ++i;
  const int row = cacheRow(layout, runs.sequence[i], r - runs.rowStart[i]);
  if (row < 0 && threadIdx.x == 0)
    *bad = 1;
  return row;
}

/// Grid (rows), 128 threads: each run's cached row p split into its latent
/// (C [rows, latent]) and its RoPE key, written after each head's K_nope in
/// keys ([heads, rows, nope + rope]), as T (F32, or BF16 for the fused
/// attention); a position without a page sets *bad and its row is zero.
/// One launch for a group's runs, so that K and V are two products for the
/// group rather than two a run (mini's 8 sequences: 8 gathers and 16
/// products of ~7 us each a layer).
template <typename T, typename CacheT>
__global__ void gatherRowsKernel(const CacheT *cache, PagedLayout layout,
                                 GatherRuns runs, int heads, int nope, int rope,
                                 int latent, T *latents, T *keys,
                                 int32_t *bad) {
  awaitPriorKernels();
  const int r = blockIdx.x, rows = runs.rowStart[runs.count];
  const int row = gatheredCacheRow(layout, runs, r, bad);
  const CacheT *from = cache + size_t(row < 0 ? 0 : row) * (latent + rope);
  for (int e = threadIdx.x; e < latent; e += blockDim.x)
    latents[size_t(r) * latent + e] = T(row < 0 ? 0.f : loadValue(from, e));
  const int width = nope + rope;
  for (int e = threadIdx.x; e < heads * rope; e += blockDim.x) {
    const int h = e / rope, j = e % rope;
    keys[(size_t(h) * rows + r) * width + nope + j] =
        T(row < 0 ? 0.f : loadValue(from, latent + j));
  }
}

/// gatherRowsKernel for a BF16 cache into BF16 matrices, 16 bytes (8
/// values) a copy: a thread a chunk of the latent, then of the heads' RoPE
/// keys (mini's 8x1024 prefill gathered 2-byte values at 25 us a layer, a
/// third of the copy bandwidth). The same values; widths in eights and
/// every row 16-byte aligned (gathersBy16). On by default since session
/// 26's H200 run.
__global__ void gatherBf16RowsBy16Kernel(const __nv_bfloat16 *cache,
                                         PagedLayout layout, GatherRuns runs,
                                         int heads, int nope, int rope,
                                         int latent, __nv_bfloat16 *latents,
                                         __nv_bfloat16 *keys, int32_t *bad) {
  awaitPriorKernels();
  const int r = blockIdx.x, rows = runs.rowStart[runs.count];
  const int row = gatheredCacheRow(layout, runs, r, bad);
  const uint4 *from = reinterpret_cast<const uint4 *>(
      cache + size_t(row < 0 ? 0 : row) * (latent + rope));
  const uint4 zero = make_uint4(0, 0, 0, 0);
  const int latentChunks = latent / 8, ropeChunks = rope / 8;
  uint4 *latentRow = reinterpret_cast<uint4 *>(latents + size_t(r) * latent);
  for (int c = threadIdx.x; c < latentChunks; c += blockDim.x)
    latentRow[c] = row < 0 ? zero : from[c];
  const int width = nope + rope;
  for (int e = threadIdx.x; e < heads * ropeChunks; e += blockDim.x) {
    const int h = e / ropeChunks, c = e % ropeChunks;
    *reinterpret_cast<uint4 *>(keys + (size_t(h) * rows + r) * width + nope +
                               8 * c) = row < 0 ? zero : from[latentChunks + c];
  }
}

/// Whether gatherBf16RowsBy16Kernel takes the widths and matrices, and is
/// not turned off (MELT_CUDA_GATHER_BY16=0: 2 bytes a copy). mini's traced
/// 8x1024 prefill: 7 gathers 90 against 176 us
/// (bench/results/prefill_switches_trace_s26_h200.txt).
bool gathersBy16(int nope, int rope, int latent, const void *cache,
                 const void *latents, const void *keys) {
  static const bool asked = melt::rt::envSwitch("MELT_CUDA_GATHER_BY16", true);
  auto aligned = [](const void *p) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
  };
  return asked && nope % 8 == 0 && rope % 8 == 0 && latent % 8 == 0 &&
         aligned(cache) && aligned(latents) && aligned(keys);
}

/// Grid (count), 128 threads: the run's queries as [count, heads, nope +
/// rope] (q_nope then q_rope per head).
__global__ void packQueriesKernel(const float *qNope, const float *qRope,
                                  int first, int heads, int nope, int rope,
                                  float *queries) {
  awaitPriorKernels();
  const int i = blockIdx.x, t = first + i, width = nope + rope;
  for (int e = threadIdx.x; e < heads * width; e += blockDim.x) {
    const int h = e / width, j = e % width;
    const size_t th = size_t(t) * heads + h;
    queries[size_t(i) * heads * width + e] =
        j < nope ? qNope[th * nope + j] : qRope[th * rope + j - nope];
  }
}

/// Grid (queries, heads), 256 threads: row (h, i) of the scores [heads,
/// queries, reach] becomes the softmax of scale x its first `position + i +
/// 1` entries (the positions query i sees), zeros after.
__global__ void causalSoftmaxKernel(float *scores, int queries, int reach,
                                    int position, float scale) {
  awaitPriorKernels();
  const int i = blockIdx.x, h = blockIdx.y;
  float *row = scores + (size_t(h) * queries + i) * reach;
  const int visible = min(reach, position + i + 1);
  __shared__ float slots[32];
  float top = -INFINITY;
  for (int s = threadIdx.x; s < visible; s += blockDim.x)
    top = fmaxf(top, row[s] * scale);
  top = blockReduce<true>(top, slots);
  float sum = 0.f;
  for (int s = threadIdx.x; s < visible; s += blockDim.x)
    sum += expf(row[s] * scale - top);
  sum = blockReduce<false>(sum, slots);
  const float norm = sum > 0.f ? 1.f / sum : 0.f;
  for (int s = threadIdx.x; s < reach; s += blockDim.x)
    row[s] = s < visible ? expf(row[s] * scale - top) * norm : 0.f;
}

/// Queries a block of scores holds: the budget's worth, at least 16.
int blockQueries(const MlaSplitShape &s, int count, int reach,
                 size_t budgetFloats) {
  const size_t perQuery = size_t(s.heads) * std::max(reach, 1);
  const size_t fit = std::max<size_t>(16, budgetFloats / perQuery);
  return int(std::min<size_t>(size_t(count), fit));
}

/// 16-byte aligned pieces of scratch (floats), of F32 or (halved) BF16.
size_t floatsOf(size_t elements, bool bf16) {
  const size_t floats = bf16 ? (elements + 1) / 2 : elements;
  return (floats + 3) / 4 * 4;
}

/// The scratch a run takes (floats): latents, keys, values (BF16 for the
/// fused kernel), packed queries and scores (none for the fused kernel: it
/// reads the queries where they are and keeps the scores on the chip).
struct RunScratch {
  size_t latents, keys, values, queries, scores;
  size_t total() const { return latents + keys + values + queries + scores; }
};
RunScratch runScratch(const MlaSplitShape &s, const DecompressedQueries &r,
                      size_t budgetFloats, bool fused) {
  const int reach = r.position + r.count, width = s.nope + s.rope;
  RunScratch p;
  p.latents = floatsOf(size_t(reach) * s.latent, fused);
  p.keys = floatsOf(size_t(s.heads) * reach * width, fused);
  p.values = floatsOf(size_t(s.heads) * reach * s.valueDim, fused);
  p.queries = fused ? 0 : floatsOf(size_t(r.count) * s.heads * width, false);
  p.scores =
      fused
          ? 0
          : floatsOf(size_t(s.heads) *
                         blockQueries(s, r.count, reach, budgetFloats) * reach,
                     false);
  return p;
}

/// The fused form's runs in groups, each one attention launch: up to
/// kCausalMaxRuns runs whose scratch together stays within the budget (a
/// run alone past it is a group of its own). [begin, end) index pairs.
std::vector<std::pair<size_t, size_t>>
fusedGroups(const MlaSplitShape &s,
            const std::vector<DecompressedQueries> &runs, size_t budgetFloats) {
  std::vector<std::pair<size_t, size_t>> groups;
  size_t floats = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    const size_t run = runScratch(s, runs[i], budgetFloats, true).total();
    if (groups.empty() ||
        groups.back().second - groups.back().first >= size_t(kCausalMaxRuns) ||
        floats + run > budgetFloats) {
      groups.push_back({i, i});
      floats = 0;
    }
    ++groups.back().second;
    floats += run;
  }
  return groups;
}

/// The projected queries' rope part rotated ahead (BF16 rows,
/// CausalProjectedQuery::ropeRotated), first in the scratch.
size_t rotatedRopeFloats(const MlaSplitShape &s, bool projected) {
  return projected ? floatsOf(size_t(s.tokens) * s.heads * s.rope, true) : 0;
}

/// W_UK and W_UV in BF16, for the fused form (made once a call).
size_t weightFloats(const MlaSplitShape &s, bool fused) {
  return fused ? floatsOf(size_t(s.heads) * s.nope * s.latent, true) +
                     floatsOf(size_t(s.heads) * s.valueDim * s.latent, true)
               : 0;
}

} // namespace

bool melt::rt::cuda::decompressedRuns(const std::vector<int32_t> &sequences,
                                      const std::vector<int32_t> &positions,
                                      std::vector<DecompressedQueries> &runs) {
  runs.clear();
  if (sequences.size() != positions.size())
    return false;
  std::map<int, size_t> seen;
  for (size_t t = 0; t < sequences.size(); ++t) {
    const int b = sequences[t], p = positions[t];
    if (b < 0 || p < 0)
      return false;
    if (!runs.empty() && runs.back().sequence == b &&
        runs.back().position + runs.back().count == p) {
      ++runs.back().count;
      continue;
    }
    if (seen.count(b)) // a second run of a sequence, or a gap
      return false;
    seen[b] = runs.size();
    runs.push_back({b, int(t), 1, p});
  }
  return true;
}

bool melt::rt::cuda::mlaDecompressedFits(const MlaSplitShape &s) {
  return s.heads > 0 && s.nope > 0 && s.rope >= 0 && s.latent > 0 &&
         s.valueDim > 0 && s.latent + s.rope <= 1024;
}

bool melt::rt::cuda::mlaDecompressedFusesBf16(const MlaSplitShape &s) {
  return causalAttentionFits(s.nope, s.rope, s.valueDim);
}

size_t melt::rt::cuda::mlaDecompressedScratchFloats(
    const MlaSplitShape &s, const std::vector<DecompressedQueries> &runs,
    size_t budgetFloats, bool bf16Fused, bool projected) {
  const size_t ahead =
      rotatedRopeFloats(s, projected) + weightFloats(s, bf16Fused);
  size_t most = 0;
  if (bf16Fused) {
    // A group's runs side by side.
    for (const auto &[begin, end] : fusedGroups(s, runs, budgetFloats)) {
      size_t group = 0;
      for (size_t i = begin; i < end; ++i)
        group += runScratch(s, runs[i], budgetFloats, true).total();
      most = std::max(most, group);
    }
    return ahead + most;
  }
  for (const DecompressedQueries &r : runs)
    most = std::max(most, runScratch(s, r, budgetFloats, bf16Fused).total());
  return ahead + most;
}

template <typename CacheT>
CudaStatus melt::rt::cuda::mlaDecompressed(
    GemmRunner &gemm, const float *qNope, const float *qRope,
    const CacheT *cache, const PagedLayout &layout, const float *wUk,
    const float *wUv, const MlaSplitShape &s,
    const std::vector<DecompressedQueries> &runs, float scale, float *scratch,
    size_t scratchFloats, size_t budgetFloats, bool bf16Fused, float *out,
    int32_t *bad, const CausalProjectedQuery *projected,
    const CausalOutputCodes *codes) {
  if (!mlaDecompressedFits(s) || (bf16Fused && !mlaDecompressedFusesBf16(s)) ||
      (codes && !bf16Fused))
    return {"mla (decompressed): unsupported shape"};
  if (projected && !bf16Fused)
    return {"mla (decompressed): projected queries need the fused attention"};
  if (mlaDecompressedScratchFloats(s, runs, budgetFloats, bf16Fused,
                                   projected != nullptr) > scratchFloats)
    return {"mla (decompressed): scratch too small"};
  cudaStream_t stream = gemm.stream();
  const int width = s.nope + s.rope, heads = s.heads;
  auto launched = [](cudaError_t e) -> CudaStatus {
    if (e != cudaSuccess)
      return {std::string("mla (decompressed): ") + cudaGetErrorString(e)};
    return CudaStatus::ok();
  };
  // The projected BF16 queries' rope part rotated once, for every head
  // (MELT_CUDA_CAUSAL_ROPE_AHEAD=0: each attention block rotates its own).
  static const bool ropeAhead =
      melt::rt::envSwitch("MELT_CUDA_CAUSAL_ROPE_AHEAD", true);
  CausalProjectedQuery rotatedAhead;
  if (projected && projected->qBf16 && ropeAhead) {
    auto *rotated = reinterpret_cast<__nv_bfloat16 *>(scratch);
    if (CudaStatus e = launched(causalRotateQueryRope(
            *projected, s.tokens, heads, s.nope, rotated, stream)))
      return e;
    rotatedAhead = *projected;
    rotatedAhead.ropeRotated = rotated;
    projected = &rotatedAhead;
  }
  scratch += rotatedRopeFloats(s, projected != nullptr);
  // The fused form's BF16 weights, ahead of the runs' scratch.
  auto *wUkBf16 = reinterpret_cast<__nv_bfloat16 *>(scratch);
  auto *wUvBf16 = reinterpret_cast<__nv_bfloat16 *>(
      scratch + floatsOf(size_t(heads) * s.nope * s.latent, true));
  if (bf16Fused) {
    if (CudaStatus e =
            launched(convert({wUk, false}, size_t(heads) * s.nope * s.latent,
                             {wUkBf16, true}, stream)))
      return e;
    if (CudaStatus e = launched(convert({wUv, false},
                                        size_t(heads) * s.valueDim * s.latent,
                                        {wUvBf16, true}, stream)))
      return e;
  }
  float *runScratchStart = scratch + weightFloats(s, bf16Fused);
  // K_nope[h] = c W_UK[h]^T, into the first nope values of each key row;
  // V[h] = c W_UV[h]^T: two batched products over the heads for `rows`
  // gathered rows.
  auto products = [&](int rows, GemmRunner::Batched &k,
                      GemmRunner::Batched &v) {
    k.m = rows, k.n = s.nope, k.k = s.latent, k.batches = heads;
    k.wNK = true, k.xRow = s.latent, k.xBatch = 0;
    k.wBatch = int64_t(s.nope) * s.latent;
    k.yRow = width, k.yBatch = int64_t(rows) * width;
    v = k;
    v.n = s.valueDim, v.wBatch = int64_t(s.valueDim) * s.latent;
    v.yRow = s.valueDim, v.yBatch = int64_t(rows) * s.valueDim;
  };
  if (bf16Fused) {
    // A group's latents, K and V in BF16 (the attention's operands), its
    // runs' rows side by side in one matrix each (within the runs' own
    // scratch added up): one gather, two products, then one fused
    // attention launch for the group (its runs' blocks fill one grid).
    for (const auto &[begin, end] : fusedGroups(s, runs, budgetFloats)) {
      const GatherRuns gather = gatherOf(runs, begin, end);
      const int rows = gather.rowStart[gather.count];
      auto *cb = reinterpret_cast<__nv_bfloat16 *>(runScratchStart);
      auto *kb = reinterpret_cast<__nv_bfloat16 *>(
          runScratchStart + floatsOf(size_t(rows) * s.latent, true));
      auto *vb = kb + floatsOf(size_t(heads) * rows * width, true) * 2;
      GemmRunner::Batched k, v;
      products(rows, k, v);
      cudaError_t gathered;
      if constexpr (std::is_same_v<CacheT, __nv_bfloat16>)
        gathered =
            gathersBy16(s.nope, s.rope, s.latent, cache, cb, kb)
                ? launchOverlapped(gatherBf16RowsBy16Kernel, dim3(rows), 128, 0,
                                   stream, cache, layout, gather, heads, s.nope,
                                   s.rope, s.latent, cb, kb, bad)
                : launchOverlapped(gatherRowsKernel<__nv_bfloat16, CacheT>,
                                   dim3(rows), 128, 0, stream, cache, layout,
                                   gather, heads, s.nope, s.rope, s.latent, cb,
                                   kb, bad);
      else
        gathered =
            launchOverlapped(gatherRowsKernel<__nv_bfloat16, CacheT>,
                             dim3(rows), 128, 0, stream, cache, layout, gather,
                             heads, s.nope, s.rope, s.latent, cb, kb, bad);
      if (CudaStatus e = launched(gathered))
        return e;
      if (CudaStatus e = gemm.bf16Batched(cb, wUkBf16, kb, k))
        return e;
      if (CudaStatus e = gemm.bf16Batched(cb, wUvBf16, vb, v))
        return e;
      CausalRunOperands group[kCausalMaxRuns];
      for (size_t i = begin; i < end; ++i) {
        const DecompressedQueries &r = runs[i];
        const int first = gather.rowStart[i - begin];
        group[i - begin] = {
            {r.first, r.count, r.position, r.position + r.count},
            kb + size_t(first) * width,
            vb + size_t(first) * s.valueDim,
            rows};
      }
      if (CudaStatus e = launched(
              projected
                  ? causalAttentionBf16(*projected, group, int(end - begin),
                                        heads, s.nope, s.rope, s.valueDim,
                                        scale, out, stream, codes)
                  : causalAttentionBf16(qNope, qRope, group, int(end - begin),
                                        heads, s.nope, s.rope, s.valueDim,
                                        scale, out, stream, codes)))
        return e;
    }
    return CudaStatus::ok();
  }
  for (size_t i = 0; i < runs.size(); ++i) {
    const DecompressedQueries &r = runs[i];
    const int reach = r.position + r.count;
    const RunScratch p = runScratch(s, r, budgetFloats, false);
    float *latents = runScratchStart, *keys = latents + p.latents,
          *values = keys + p.keys, *queries = values + p.values,
          *scores = queries + p.queries;
    GemmRunner::Batched k, v;
    products(reach, k, v);
    const GatherRuns gather = gatherOf(runs, i, i + 1);
    if (CudaStatus e = launched(
            launchOverlapped(gatherRowsKernel<float, CacheT>, dim3(reach), 128,
                             0, stream, cache, layout, gather, heads, s.nope,
                             s.rope, s.latent, latents, keys, bad)))
      return e;
    if (CudaStatus e = launched(launchOverlapped(
            packQueriesKernel, dim3(r.count), 128, 0, stream, qNope, qRope,
            r.first, heads, s.nope, s.rope, queries)))
      return e;
    if (CudaStatus e = gemm.tf32Batched(latents, wUk, keys, k))
      return e;
    if (CudaStatus e = gemm.tf32Batched(latents, wUv, values, v))
      return e;
    const int block = blockQueries(s, r.count, reach, budgetFloats);
    for (int q0 = 0; q0 < r.count; q0 += block) {
      const int n = std::min(block, r.count - q0);
      // Scores [heads, n, reach] = Q[h] K[h]^T.
      GemmRunner::Batched qk;
      qk.m = n, qk.n = reach, qk.k = width, qk.batches = heads;
      qk.wNK = true, qk.xRow = int64_t(heads) * width, qk.xBatch = width;
      qk.wBatch = int64_t(reach) * width;
      qk.yRow = reach, qk.yBatch = int64_t(n) * reach;
      if (CudaStatus e = gemm.tf32Batched(queries + size_t(q0) * heads * width,
                                          keys, scores, qk))
        return e;
      if (CudaStatus e = launched(launchOverlapped(
              causalSoftmaxKernel, dim3(n, heads), 256, 0, stream, scores, n,
              reach, r.position + q0, scale)))
        return e;
      // out[t, h] = P[h] V[h].
      GemmRunner::Batched pv;
      pv.m = n, pv.n = s.valueDim, pv.k = reach, pv.batches = heads;
      pv.wNK = false, pv.xRow = reach, pv.xBatch = int64_t(n) * reach;
      pv.wBatch = int64_t(reach) * s.valueDim;
      pv.yRow = int64_t(heads) * s.valueDim, pv.yBatch = s.valueDim;
      if (CudaStatus e = gemm.tf32Batched(
              scores, values, out + size_t(r.first + q0) * heads * s.valueDim,
              pv))
        return e;
    }
  }
  return CudaStatus::ok();
}

namespace melt::rt::cuda {
#define MELT_DECOMPRESSED_READER(CacheT)                                       \
  template CudaStatus mlaDecompressed(                                         \
      GemmRunner &, const float *, const float *, const CacheT *,              \
      const PagedLayout &, const float *, const float *,                       \
      const MlaSplitShape &, const std::vector<DecompressedQueries> &, float,  \
      float *, size_t, size_t, bool, float *, int32_t *,                       \
      const CausalProjectedQuery *, const CausalOutputCodes *);
MELT_DECOMPRESSED_READER(float)
MELT_DECOMPRESSED_READER(__nv_bfloat16)
#undef MELT_DECOMPRESSED_READER
} // namespace melt::rt::cuda
