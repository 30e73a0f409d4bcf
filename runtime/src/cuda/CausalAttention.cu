//===- CausalAttention.cu - a prefill's causal attention, fused -----------===//
#include "cuda/CausalAttention.h"

#include "EnvSwitch.h"

#include "cuda/AsyncCopy.cuh"
#include "cuda/CausalAttentionParts.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/Exp2.cuh"
#include "cuda/RopeRotation.cuh"
#include "cuda/TensorCoreMma.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>

using namespace melt::rt::cuda;

namespace {

constexpr int kWarps = 4, kThreads = kWarps * 32;
/// Queries a block takes (16 a warp) and keys a tile holds.
constexpr int kQueries = kWarps * 16, kKeys = 64;
constexpr int kKeyTiles = kKeys / 8;

template <int kNope, int kRope, int kValue> struct Widths {
  static constexpr int qk = kNope + kRope;
  static_assert(kNope % 16 == 0 && kRope % 16 == 0 && kValue % 16 == 0,
                "widths in whole mma steps");
  /// Row strides in shared memory (BF16 elements), 16 bytes of padding:
  /// the eight rows an ldmatrix reads fall in distinct banks.
  static constexpr int keyStride = qk + 8, valueStride = kValue + 8;
  static constexpr int qkSteps = qk / 16, valueTiles = kValue / 8;
  /// A buffer: the key tile, then the value tile.
  static constexpr int keyElements = kKeys * keyStride;
  static constexpr int bufferElements = keyElements + kKeys * valueStride;
  static constexpr size_t sharedBytes = 2 * bufferElements * 2;
};

/// Rows [first, first + kKeys) of a head's [keys, kWidth] BF16 matrix into
/// a tile of shared memory, 16 bytes a copy, in flight on return (rows past
/// `keys` repeat the last: finite values, never weighted).
template <int kWidth, int kStride>
__device__ __forceinline__ void copyTile(const __nv_bfloat16 *rows, int first,
                                         int keys, __nv_bfloat16 *tile) {
  constexpr int kChunks = kWidth / 8;
#pragma unroll
  for (int e = threadIdx.x; e < kKeys * kChunks; e += kThreads) {
    const int r = e / kChunks, c = (e % kChunks) * 8;
    const int key = min(first + r, keys - 1);
    copyAsync16(tile + r * kStride + c, rows + size_t(key) * kWidth + c);
  }
}

/// Grid blocks x heads x runs (blocks: of the longest run), 128 threads;
/// block i takes query block blocks - 1 - i / (heads x runs) (the last
/// queries of every run and head first), head and run from the rest;
/// blocks past a run's queries return. Warp w holds queries [q0, q0 +
/// 16) of the block as A fragments, the scores of a key tile (8 n-tiles of
/// C fragments), and its output rows (kValue / 8 C fragments); lane (g, t)
/// keeps rows g and g + 8's running maximum and its share of their sums.
/// Key and value tiles in two buffers: the next tile's copies are in flight
/// while the block works on this one.
/// The queries' type a compile-time choice (kBf16Query: query.bf16), and
/// all of a thread's query loads issued before any is used: with the type
/// a branch at each load, and the rope rotation's between them, the loads
/// went out one after another (mini's 8x1024 prefill: 2.1 ms of attention
/// reading the BF16 projection against 1.6 reading split F32 queries).
template <int kNope, int kRope, int kValue, bool kBf16Query>
__global__ void __launch_bounds__(kThreads)
    causalAttentionKernel(const __grid_constant__ QuerySource query,
                          const __grid_constant__ CausalRunList runs, int heads,
                          float scaleLog2, float *out,
                          const CausalOutputCodes codes) {
  using W = Widths<kNope, kRope, kValue>;
  extern __shared__ __align__(16) uint8_t sharedBytes[];
  auto keyTileOf = [&](int buffer) {
    return reinterpret_cast<__nv_bfloat16 *>(sharedBytes) +
           buffer * W::bufferElements;
  };
  awaitPriorKernels();
  const CausalBlock place = causalBlockOf(runs, heads);
  const int block = place.queryBlock, h = place.head;
  const CausalRunOperands &operands = *place.operands;
  const CausalRun &run = operands.run;
  if (block * kQueries >= run.count)
    return;
  const __nv_bfloat16 *keys = operands.keys, *values = operands.values;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int q0 = block * kQueries + warp * 16;

  uint32_t qa[W::qkSteps][4];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int i = q0 + g + 8 * half;
    const bool in = i < run.count;
    const int token = run.first + (in ? i : 0);
    const size_t th = size_t(token) * heads + h;
    const bool rotate = query.rotation.positions != nullptr && in;
    float2 loaded[W::qkSteps][2];
#pragma unroll
    for (int s = 0; s < W::qkSteps; ++s) {
      const int c = 16 * s + 2 * t;
      const void *rows = c < kNope ? query.nope : query.rope;
      const size_t at = c < kNope ? th * query.nopeStride + c
                                  : th * query.ropeStride + (c - kNope);
      loaded[s][0] =
          in ? loadQueryPair<kBf16Query>(rows, at) : make_float2(0.f, 0.f);
      loaded[s][1] =
          in ? loadQueryPair<kBf16Query>(rows, at + 8) : make_float2(0.f, 0.f);
    }
    const int32_t position = rotate ? query.rotation.positions[token] : 0;
#pragma unroll
    for (int s = 0; s < W::qkSteps; ++s) {
      const int c = 16 * s + 2 * t;
      float2 lo = loaded[s][0], hi = loaded[s][1];
      if (16 * s >= kNope && rotate) {
        // Interleaved pairs: (c, c + 1) is pair (c - nope) / 2, eight
        // columns on four pairs more.
        const int pair = (c - kNope) / 2;
        const CausalProjectedQuery &r = query.rotation;
        lo = rotateValues(ropeAngleOf(r.inverse[pair], position, r.mscale),
                          lo.x, lo.y);
        hi = rotateValues(ropeAngleOf(r.inverse[pair + 4], position, r.mscale),
                          hi.x, hi.y);
      }
      qa[s][half] = packBf16(lo.x, lo.y);
      qa[s][2 + half] = packBf16(hi.x, hi.y);
    }
  }

  float o[W::valueTiles][4];
#pragma unroll
  for (int n = 0; n < W::valueTiles; ++n)
    o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float rowMax[2] = {-INFINITY, -INFINITY}, rowSum[2] = {0.f, 0.f};
  // Positions of rows g and g + 8; the block's last query's.
  const int position[2] = {run.position + q0 + g, run.position + q0 + g + 8};
  const int last = min(run.count, (block + 1) * kQueries) - 1;
  const int tiles = (run.position + last) / kKeys + 1;
  const size_t headRows = operands.headRows > 0 ? operands.headRows : run.keys;
  const __nv_bfloat16 *headKeys = keys + size_t(h) * headRows * W::qk;
  const __nv_bfloat16 *headValues = values + size_t(h) * headRows * kValue;
  auto copyTiles = [&](int tile) {
    __nv_bfloat16 *to = keyTileOf(tile % 2);
    copyTile<W::qk, W::keyStride>(headKeys, tile * kKeys, run.keys, to);
    copyTile<kValue, W::valueStride>(headValues, tile * kKeys, run.keys,
                                     to + W::keyElements);
    commitCopies();
  };
  copyTiles(0);

  for (int tile = 0; tile < tiles; ++tile) {
    const int first = tile * kKeys;
    // The next tile's copies go out (into the buffer every thread finished
    // reading at the end of the last iteration); this tile's have landed.
    if (tile + 1 < tiles)
      copyTiles(tile + 1);
    else
      commitCopies();
    awaitCopies<1>();
    __syncthreads();
    const __nv_bfloat16 *keyTile = keyTileOf(tile % 2);
    const __nv_bfloat16 *valueTile = keyTile + W::keyElements;

    // Scores of rows q0 .. q0 + 15 against the tile's keys.
    float s[kKeyTiles][4];
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j)
      s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
    const int matrix = lane / 8, r = lane % 8;
#pragma unroll
    for (int step = 0; step < W::qkSteps; ++step)
#pragma unroll
      for (int j = 0; j < kKeyTiles; j += 2) {
        // Matrices: keys of n-tiles j (0, 1) and j + 1 (2, 3), dims of the
        // step's low (0, 2) and high (1, 3) halves.
        uint32_t b[4];
        loadMatrices(b, keyTile + ((j + matrix / 2) * 8 + r) * W::keyStride +
                            16 * step + (matrix % 2) * 8);
        mma16816(s[j], qa[step], b[0], b[1]);
        mma16816(s[j + 1], qa[step], b[2], b[3]);
      }

    // Causal mask, scale (in log2 units), the rows' new maxima.
    float tileMax[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = first + j * 8 + 2 * t + (e & 1);
        const float v =
            key <= position[e / 2] ? s[j][e] * scaleLog2 : -INFINITY;
        s[j][e] = v;
        tileMax[e / 2] = fmaxf(tileMax[e / 2], v);
      }
    float reference[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float correction;
      reference[half] =
          advanceRowMax(tileMax[half], rowMax[half], rowSum[half], correction);
#pragma unroll
      for (int n = 0; n < W::valueTiles; ++n) {
        o[n][2 * half] *= correction;
        o[n][2 * half + 1] *= correction;
      }
    }
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = softmaxExp2(s[j][e] - reference[e / 2]);
        s[j][e] = p;
        rowSum[e / 2] += p;
      }

      // o += P V: the scores' C fragments of n-tiles 2 k and 2 k + 1 are the
      // A fragment of keys [16 k, 16 k + 16).
#pragma unroll
    for (int k = 0; k < kKeyTiles / 2; ++k) {
      const uint32_t a[4] = {packBf16(s[2 * k][0], s[2 * k][1]),
                             packBf16(s[2 * k][2], s[2 * k][3]),
                             packBf16(s[2 * k + 1][0], s[2 * k + 1][1]),
                             packBf16(s[2 * k + 1][2], s[2 * k + 1][3])};
#pragma unroll
      for (int n = 0; n < W::valueTiles; n += 2) {
        // Transposed: keys of the step's low (0, 2) and high (1, 3) halves,
        // value columns of n-tiles n (0, 1) and n + 1 (2, 3).
        uint32_t b[4];
        loadMatricesTransposed(
            b, valueTile + (16 * k + (matrix % 2) * 8 + r) * W::valueStride +
                   (n + matrix / 2) * 8);
        mma16816(o[n], a, b[0], b[1]);
        mma16816(o[n + 1], a, b[2], b[3]);
      }
    }
    __syncthreads(); // this buffer is refilled next iteration
  }

  const int rows[2] = {q0 + g, q0 + g + 8};
  storeOutputRows(o, rowSum, rows, run, h, heads, t, out, codes);
}

} // namespace

bool melt::rt::cuda::causalAttentionFits(int nope, int rope, int valueDim) {
  return nope == 128 && rope == 64 && valueDim == 128;
}

cudaError_t melt::rt::cuda::causalAttentionBf16(
    const float *qNope, const float *qRope, const __nv_bfloat16 *keys,
    const __nv_bfloat16 *values, const CausalRun &run, int heads, int nope,
    int rope, int valueDim, float scale, float *out, cudaStream_t stream,
    CausalKernel kernel) {
  const CausalRunOperands one{run, keys, values};
  return causalAttentionBf16(qNope, qRope, &one, 1, heads, nope, rope, valueDim,
                             scale, out, stream, nullptr, kernel);
}

namespace {

/// Both kernels read keys and values in 16-byte pieces (cp.async, TMA).
bool alignedTo16(const void *p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

/// The kernel a launch takes: the wgmma kernel unless
/// MELT_CUDA_CAUSAL_WARPGROUPS=0 (or the caller names one).
bool onWarpgroups(CausalKernel kernel) {
  static const bool byDefault =
      melt::rt::envSwitch("MELT_CUDA_CAUSAL_WARPGROUPS", true);
  return kernel == CausalKernel::Default ? byDefault
                                         : kernel == CausalKernel::Warpgroups;
}

} // namespace

int melt::rt::cuda::causalGroupsTogether(size_t groupBytes) {
  // 12 MB (19 groups at mini's 8x1024), the size measured on the H200 in
  // session 51, a fifth of its 60 MB of L2: the queries and outputs stream
  // through the rest.
  constexpr size_t kSetBytes = size_t(12) << 20;
  static const bool inSets =
      melt::rt::envSwitch("MELT_CUDA_CAUSAL_L2_SETS", true);
  if (!inSets || groupBytes == 0)
    return 0;
  return int(std::max<size_t>(1, kSetBytes / groupBytes));
}

namespace {

cudaError_t launchCausalAttention(const QuerySource &query,
                                  const CausalRunOperands *runs, int runCount,
                                  int heads, int nope, int rope, int valueDim,
                                  float scale, float *out, cudaStream_t stream,
                                  const CausalOutputCodes *codes,
                                  CausalKernel kernelChoice) {
  if (!causalAttentionFits(nope, rope, valueDim) || heads <= 0 ||
      runCount < 0 || runCount > kCausalMaxRuns ||
      (codes && codes->codes && (!codes->scales || codes->rows <= 0)) ||
      (codes && !codes->codes && !codes->bf16))
    return cudaErrorInvalidValue;
  const bool warpgroups = onWarpgroups(kernelChoice);
  const int blockQueries = warpgroups ? kCausalWarpgroupQueries : kQueries;
  CausalRunList list;
  for (int i = 0; i < runCount; ++i) {
    const CausalRun &run = runs[i].run;
    if (run.count < 0 || run.position < 0 ||
        run.keys < run.position + run.count ||
        (runs[i].headRows != 0 && runs[i].headRows < run.keys) ||
        !alignedTo16(runs[i].keys) || !alignedTo16(runs[i].values))
      return cudaErrorInvalidValue;
    if (run.count == 0) // nothing to attend: left out of the grid
      continue;
    list.run[list.count++] = runs[i];
    list.blocks =
        std::max(list.blocks, (run.count + blockQueries - 1) / blockQueries);
  }
  if (list.count == 0)
    return cudaSuccess;
  int longest = 0;
  for (int i = 0; i < list.count; ++i)
    longest = std::max(longest, list.run[i].run.keys);
  list.groupsTogether =
      causalGroupsTogether(size_t(longest) * (nope + rope + valueDim) * 2);
  if (!out && !codes) // (nothing to write)
    return cudaErrorInvalidValue;
  if (warpgroups) {
    const cudaError_t e = launchCausalAttentionWarpgroups(
        query, list, heads, float(scale * M_LOG2E), out,
        codes ? *codes : CausalOutputCodes{}, stream);
    if (e != cudaErrorNotSupported)
      return e;
    // No tensor maps for its keys and values (the driver gives no encoder):
    // the mma.sync kernel, which copies them itself.
    return launchCausalAttention(query, runs, runCount, heads, nope, rope,
                                 valueDim, scale, out, stream, codes,
                                 CausalKernel::Warps);
  }
  auto kernel = query.bf16 ? causalAttentionKernel<128, 64, 128, true>
                           : causalAttentionKernel<128, 64, 128, false>;
  constexpr size_t shared = Widths<128, 64, 128>::sharedBytes;
  // Per launch (per current device; a prefill's few launches).
  if (cudaError_t e = cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared));
      e != cudaSuccess)
    return e;
  const unsigned grid = unsigned(list.blocks) * heads * list.count;
  return launchOverlapped(kernel, dim3(grid), kThreads, shared, stream, query,
                          list, heads, float(scale * M_LOG2E), out,
                          codes ? *codes : CausalOutputCodes{});
}

} // namespace

namespace {

/// Thread i: pair i % kCausalRopePairs of token i / kCausalRopePairs, its
/// angle once, then that pair of every head's rope part, rounded to BF16.
__global__ void
rotateQueryRopeKernel(const __grid_constant__ CausalProjectedQuery query,
                      int tokens, int heads, int nope,
                      __nv_bfloat162 *rotated) {
  awaitPriorKernels();
  const int i = int(blockIdx.x) * int(blockDim.x) + int(threadIdx.x);
  if (i >= tokens * kCausalRopePairs)
    return;
  const int token = i / kCausalRopePairs, pair = i % kCausalRopePairs;
  const RopeAngle angle =
      ropeAngleOf(query.inverse[pair], query.positions[token], query.mscale);
  const size_t width = size_t(nope) + 2 * kCausalRopePairs;
#pragma unroll 4
  for (int h = 0; h < heads; ++h) {
    const size_t th = size_t(token) * heads + h;
    // Interleaved pairs: columns (2 pair, 2 pair + 1) of the rope part.
    const float2 x =
        loadQueryPair<true>(query.qBf16, th * width + nope + 2 * pair);
    const float2 y = rotateValues(angle, x.x, x.y);
    rotated[th * kCausalRopePairs + pair] = __floats2bfloat162_rn(y.x, y.y);
  }
}

} // namespace

cudaError_t melt::rt::cuda::causalRotateQueryRope(
    const CausalProjectedQuery &query, int tokens, int heads, int nope,
    __nv_bfloat16 *rotated, cudaStream_t stream) {
  if (!query.qBf16 || query.q || !query.positions || !rotated || tokens < 0 ||
      heads <= 0 || nope < 0 || nope % 2 != 0 ||
      tokens > std::numeric_limits<int>::max() / kCausalRopePairs)
    return cudaErrorInvalidValue;
  if (tokens == 0)
    return cudaSuccess;
  constexpr int kBlock = 256;
  const unsigned blocks =
      unsigned((tokens * kCausalRopePairs + kBlock - 1) / kBlock);
  CausalProjectedQuery unrotated = query;
  unrotated.ropeRotated = nullptr;
  const cudaError_t e = launchOverlapped(
      rotateQueryRopeKernel, dim3(blocks), kBlock, 0, stream, unrotated, tokens,
      heads, nope, reinterpret_cast<__nv_bfloat162 *>(rotated));
  return e != cudaSuccess ? e : cudaGetLastError();
}

cudaError_t melt::rt::cuda::causalAttentionBf16(
    const float *qNope, const float *qRope, const CausalRunOperands *runs,
    int runCount, int heads, int nope, int rope, int valueDim, float scale,
    float *out, cudaStream_t stream, const CausalOutputCodes *codes,
    CausalKernel kernel) {
  QuerySource query;
  query.nope = qNope, query.rope = qRope;
  query.nopeStride = nope, query.ropeStride = rope;
  return launchCausalAttention(query, runs, runCount, heads, nope, rope,
                               valueDim, scale, out, stream, codes, kernel);
}

cudaError_t melt::rt::cuda::causalAttentionBf16(
    const CausalProjectedQuery &projected, const CausalRunOperands *runs,
    int runCount, int heads, int nope, int rope, int valueDim, float scale,
    float *out, cudaStream_t stream, const CausalOutputCodes *codes,
    CausalKernel kernel) {
  if (!projected.q == !projected.qBf16 || !projected.positions ||
      rope != 2 * int(std::size(projected.inverse)))
    return cudaErrorInvalidValue;
  QuerySource query;
  if (projected.qBf16)
    query.nope = projected.qBf16, query.rope = projected.qBf16 + nope;
  else
    query.nope = projected.q, query.rope = projected.q + nope;
  query.bf16 = projected.qBf16 != nullptr;
  query.nopeStride = query.ropeStride = nope + rope;
  if (projected.ropeRotated) {
    // The rope part rotated ahead: BF16 rows of its own, not rotated again
    // (the kernels read both parts in one type: BF16 queries only).
    if (!projected.qBf16)
      return cudaErrorInvalidValue;
    query.rope = projected.ropeRotated, query.ropeStride = rope;
    return launchCausalAttention(query, runs, runCount, heads, nope, rope,
                                 valueDim, scale, out, stream, codes, kernel);
  }
  query.rotation = projected;
  return launchCausalAttention(query, runs, runCount, heads, nope, rope,
                               valueDim, scale, out, stream, codes, kernel);
}
