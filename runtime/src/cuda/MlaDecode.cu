//===- MlaDecode.cu - MLA decode over the paged latent cache --------------===//
//
// One thread block takes 16 heads of one sequence over one chunk of its
// cache, 64 tokens at a time (a page of 64 a tile, one block an SM; 32 on
// smaller pages, two blocks an SM, and for 64 heads a block): the tile is
// copied to shared memory once and serves all its heads, so the cache is
// read once per 16 heads; the next tile streams in (two buffers) while one
// is used: by TMA (one thread's nine box loads, counted on an mbarrier)
// where the cache's extent is known, else by every thread's cp.async. A
// tile is kept as nine [tokens x 64] blocks of its dims in the 128-byte
// swizzle (Wgmma.cuh's layout), which both TMA and conflict-free ldmatrix
// reads take. Scores and the weighted sum run on the tensor cores
// (mma.sync m16n8k16, BF16 in, FP32 out) with an online softmax over the
// tiles (the scale in the weights' exponent; the warps' scores meet in
// padded shared rows, written and read without bank conflicts); with one
// head tile a block, each warp's query fragments stay in registers from
// the first tile on. Each chunk leaves an unnormalized [16, 512] sum with
// its running max and sum; a combine kernel merges the chunks.
//
//===----------------------------------------------------------------------===//
#include "cuda/MlaDecode.h"
#include "cuda/MlaDecodeWarpgroups.h"

#include "EnvSwitch.h"

#include "cuda/AsyncCopy.cuh"
#include "cuda/BulkTensorCopy.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/Exp2.cuh"
#include "cuda/MlaWarpgroupRows.cuh"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/Wgmma.cuh"

#include <algorithm>
#include <cfloat>

namespace melt::rt::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
/// Tokens a tile: 32 (two blocks an SM), or 64 (a page of 64 a tile; one
/// block an SM: half the barriers and softmax rounds per byte of cache).
constexpr int kSmallTileTokens = 32, kLargeTileTokens = 64;
// Weighted sum: each warp owns a slice of the 512 output columns.
constexpr int kWarpColumns = kLatentRank / kWarps;
constexpr int kColumnTiles = kWarpColumns / 8;
// The queries' shared-memory rows padded by 8 BF16 (16 bytes): rows 1168
// bytes apart put the 8 rows one fragment load touches in different banks.
constexpr int kRowStride = kLatentEntry + 8;
constexpr int kEntryChunks = kLatentEntry * 2 / 16; // 16-byte chunks a row

/// A tile of kTokens cached tokens and how the warps split it.
template <int kTokens> struct TileGeometry {
  // Scores: each warp takes 16 tokens over a slice of the 576 dims.
  static constexpr int tokenGroups = kTokens / 16;
  static constexpr int dimSlices = kWarps / tokenGroups;
  static constexpr int sliceDims = kLatentEntry / dimSlices;
  // Nine [kTokens x 64 dims] blocks in the 128-byte swizzle.
  static constexpr int blockBytes = kTokens * kSwizzleRowBytes;
  static constexpr int bytes = kLatentEntry / 64 * blockBytes;
  static constexpr int probStride = kTokens + 8;
  // A head's scores padded by 8 floats: the warps' float2 stores of their
  // fragments (lanes 4 g + t at head g, tokens 2 t) fill the 32 banks once
  // a half warp, and the softmax's vector loads of a head's row do too.
  static constexpr int scoreStride = kTokens + 8;
};

/// A block takes 16 * kHeadTiles heads (kHeadTiles mma tiles of M = 16):
/// more heads per block read the cache fewer times but hold more state.
template <int kHeadTiles, int kTileTokens> struct BlockShape {
  static constexpr int heads = 16 * kHeadTiles;
  // Softmax: threads per head and tokens per thread.
  static constexpr int headThreads = kThreads / heads;
  static constexpr int threadTokens = kTileTokens / headThreads;
  static_assert(TileGeometry<kTileTokens>::sliceDims % 16 == 0 &&
                    kColumnTiles % 2 == 0 && headThreads <= 32 &&
                    threadTokens >= 1,
                "tile shape");
};

/// Shared memory, from a 1024-byte aligned base (the swizzle's).
template <int kHeadTiles, int kTileTokens> struct SharedTile {
  using Geometry = TileGeometry<kTileTokens>;
  static constexpr int kHeads = BlockShape<kHeadTiles, kTileTokens>::heads;
  // Double-buffered.
  alignas(kSwizzleAtomBytes) uint8_t cache[2][Geometry::bytes];
  __nv_bfloat16 queries[kHeads * kRowStride];
  // Per dim slice.
  alignas(16) float scores[Geometry::dimSlices][kHeads * Geometry::scoreStride];
  __nv_bfloat16 probs[kHeads * Geometry::probStride];
  float rescale[kHeads];
  uint64_t loaded[2]; // the buffers' TMA barriers
};

/// Dynamic shared memory of a block: the tile and room to align it.
template <int kHeadTiles, int kTileTokens> constexpr size_t sharedBytes() {
  return sizeof(SharedTile<kHeadTiles, kTileTokens>) + kSwizzleAtomBytes;
}

/// Byte offset of token row `row`, dims [dim, dim + 8) (dim a multiple of
/// 8), in a swizzled tile of kTileTokens tokens.
template <int kTileTokens>
__device__ __forceinline__ int tileOffset(int row, int dim) {
  return (dim / 64) * TileGeometry<kTileTokens>::blockBytes +
         swizzledOffset(row, (dim % 64) / 8);
}

/// The A fragment of rows [0,16), columns [k, k+16) of a row-major matrix.
__device__ inline void loadA(uint32_t (&a)[4], const __nv_bfloat16 *m,
                             int stride, int k, int lane) {
  int row = (lane & 7) + ((lane >> 3) & 1) * 8, col = k + (lane >> 4) * 8;
  loadMatrices(a, m + row * stride + col);
}

/// Adds N floats of shared memory at `from` to `row`, in the widest loads
/// their alignment allows (16 bytes for N a multiple of 4, else 8).
template <int N>
__device__ __forceinline__ void addSharedRow(float (&row)[N],
                                             const float *from) {
  static_assert(N % 2 == 0, "pairs at least");
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N; i += 4) {
      const float4 v = *reinterpret_cast<const float4 *>(from + i);
      row[i] += v.x, row[i + 1] += v.y, row[i + 2] += v.z, row[i + 3] += v.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; i += 2) {
      const float2 v = *reinterpret_cast<const float2 *>(from + i);
      row[i] += v.x, row[i + 1] += v.y;
    }
  }
}

/// N words (BF16 pairs) to shared memory at `to`, in the widest stores
/// their alignment allows (16 bytes for N a multiple of 4, else 8 where
/// N is even, else 4).
template <int N>
__device__ __forceinline__ void storeSharedWords(const uint32_t (&words)[N],
                                                 void *to) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N; i += 4)
      reinterpret_cast<uint4 *>(to)[i / 4] =
          make_uint4(words[i], words[i + 1], words[i + 2], words[i + 3]);
  } else if constexpr (N % 2 == 0) {
#pragma unroll
    for (int i = 0; i < N; i += 2)
      reinterpret_cast<uint2 *>(to)[i / 2] = make_uint2(words[i], words[i + 1]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i)
      reinterpret_cast<uint32_t *>(to)[i] = words[i];
  }
}

/// The cache row of token t0 of a sequence (its page's row t0 % pageSize).
__device__ __forceinline__ size_t cacheRow(const MlaDecodeArgs &args,
                                           const int32_t *pages, int t0) {
  return size_t(pages[t0 / args.pageSize]) * args.pageSize + t0 % args.pageSize;
}

/// kBulk: thread 0 asks TMA for tile `t0` (tokens [t0, t0 + kTileTokens)
/// of the sequence, in one page), nine [kTileTokens x 64] boxes counted on
/// `loaded`. Else every thread starts its cp.async copies of the tile,
/// tokens at or past `end` becoming zeros.
template <bool kBulk, int kTileTokens>
__device__ inline void startTileCopy(uint8_t *dst, const MlaDecodeArgs &args,
                                     const CUtensorMap &cacheMap,
                                     uint64_t *loaded, const int32_t *pages,
                                     int t0, int end) {
  const size_t row0 = cacheRow(args, pages, t0);
  if constexpr (kBulk) {
    if (threadIdx.x == 0) {
      expectBytes(loaded, TileGeometry<kTileTokens>::bytes);
      for (int block = 0; block < kLatentEntry / 64; ++block)
        loadTile2d(dst + block * TileGeometry<kTileTokens>::blockBytes,
                   &cacheMap, block * 64, int(row0), loaded);
    }
    return;
  }
  const __nv_bfloat16 *tile = args.cache + row0 * kLatentEntry;
  for (int i = threadIdx.x; i < kTileTokens * kEntryChunks; i += kThreads) {
    int token = i / kEntryChunks, col = (i % kEntryChunks) * 8;
    uint8_t *to = dst + tileOffset<kTileTokens>(token, col);
    if (t0 + token < end)
      copyAsync16(to, tile + token * kLatentEntry + col);
    else
      *reinterpret_cast<uint4 *>(to) = make_uint4(0, 0, 0, 0);
  }
  commitCopies();
}

/// Grid (chunks, head groups, sequences). A sequence's tokens are spread
/// over its `chunks` blocks by its own length, whole tiles each: the split
/// is planned for the page table's capacity (a recorded step replays at
/// every length it holds), and a short sequence in a long table would
/// otherwise leave all its tiles to the first block or two, one after the
/// other (mini's batch-1 step at 130-190 tokens: 4 tiles in a row).
/// `scaleInExp`: the weights exp2(fma(score, scale * log2 e, -max)), the
/// scale in their exponent, in place of each score scaled first
/// (MELT_CUDA_MLA_SCALE_IN_EXP).
template <int kHeadTiles, bool kBulk, int kTileTokens>
__global__ void __launch_bounds__(kThreads)
    mlaDecodeChunks(MlaDecodeArgs args, int chunks, float *partialSums,
                    float2 *partialStats, bool scaleInExp,
                    const __grid_constant__ CUtensorMap cacheMap) {
  awaitPriorKernels();
  using Shape = BlockShape<kHeadTiles, kTileTokens>;
  using Geometry = TileGeometry<kTileTokens>;
  constexpr int kTokenGroups = Geometry::tokenGroups;
  constexpr int kDimSlices = Geometry::dimSlices;
  constexpr int kSliceDims = Geometry::sliceDims;
  constexpr int kProbStride = Geometry::probStride;
  constexpr int kScoreStride = Geometry::scoreStride;
  constexpr int kHeads = Shape::heads;
  extern __shared__ __align__(16) unsigned char sharedRaw[];
  auto &s = *reinterpret_cast<SharedTile<kHeadTiles, kTileTokens> *>(
      sharedRaw +
      (kSwizzleAtomBytes - sharedAddress(sharedRaw) % kSwizzleAtomBytes) %
          kSwizzleAtomBytes);
  const int chunk = blockIdx.x, headGroup = blockIdx.y, seq = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int length = args.lengths[seq];
  const int lengthTiles = (length + kTileTokens - 1) / kTileTokens;
  const int chunkTokens = (lengthTiles + chunks - 1) / chunks * kTileTokens;
  const int begin = chunk * chunkTokens;
  const int end = min(length, begin + chunkTokens);
  const int head0 = headGroup * kHeads;
  // A chunk past the sequence's end: its statistics alone, an empty
  // chunk's (both combines skip a chunk of no weight without reading its
  // sums). A batch of 16 at 192 tokens, its table's capacity 4096: 11.2 us
  // instead of 14.6 (bench/results/mla_decode_short_contexts_h200.txt).
  if (begin >= end) {
    if (threadIdx.x < kHeads)
      partialStats[(size_t(seq) * chunks + chunk) * args.heads + head0 +
                   threadIdx.x] = make_float2(-FLT_MAX, 0.f);
    return;
  }
  const int32_t *pages =
      args.blockTable + size_t(seq) * args.maxPagesPerSequence;

  // The queries of this block, then the first tile.
  const __nv_bfloat16 *q =
      args.queries + (size_t(seq) * args.heads + head0) * kLatentEntry;
  for (int i = threadIdx.x; i < kHeads * kLatentEntry / 8; i += kThreads) {
    int row = i / (kLatentEntry / 8), col = (i % (kLatentEntry / 8)) * 8;
    copyAsync16(&s.queries[row * kRowStride + col],
                q + row * kLatentEntry + col);
  }
  commitCopies();
  if (kBulk && threadIdx.x == 0) {
    initLoadBarrier(&s.loaded[0]);
    initLoadBarrier(&s.loaded[1]);
  }
  if (kBulk)
    __syncthreads(); // the barriers initialized before their first use
  startTileCopy<kBulk, kTileTokens>(s.cache[0], args, cacheMap, &s.loaded[0],
                                    pages, begin, end);

  // Row statistics, kept by the threads that own a head in the softmax.
  float runningMax = -FLT_MAX, runningSum = 0;
  const float base2Scale = args.scale * 1.4426950408889634f;
  // This warp's output columns for every head tile.
  float acc[kHeadTiles][kColumnTiles][4] = {};
  // Where this lane's fragments lie in a tile (the same in every tile,
  // swizzle included), worked out once: the key fragment of each k16 step
  // of the warp's dim slice, and the value fragment of each 16 tokens and
  // pair of column tiles.
  // Keys: lane i addresses token (i%8 + 8*(i/16)), dims +8*((i/8)%2): the
  // matrices are (tokens 0-7, k), (0-7, k+8), (8-15, k), (8-15, k+8).
  int keyAt[kSliceDims / 16];
  {
    const int row = (warp % kTokenGroups) * 16 + (lane & 7) + (lane >> 4) * 8;
    const int dim = (warp / kTokenGroups) * kSliceDims + ((lane >> 3) & 1) * 8;
#pragma unroll
    for (int step = 0; step < kSliceDims / 16; ++step)
      keyAt[step] = tileOffset<kTileTokens>(row, dim + 16 * step);
  }
  // Values, loaded transposed: lane i addresses token (i%8 + 8*((i/8)%2)),
  // dims +8*(i/16): (tokens k..k+7, dims n), (k+8.., n), (k.., n+8),
  // (k+8.., n+8) are b0, b1 of tile n and b0, b1 of tile n+8.
  int valueAt[kTileTokens / 16][kColumnTiles / 2];
  {
    const int row = (lane & 7) + ((lane >> 3) & 1) * 8;
    const int dim = warp * kWarpColumns + (lane >> 4) * 8;
#pragma unroll
    for (int k = 0; k < kTileTokens / 16; ++k)
#pragma unroll
      for (int n = 0; n < kColumnTiles / 2; ++n)
        valueAt[k][n] = tileOffset<kTileTokens>(16 * k + row, dim + 16 * n);
  }

  // One head tile: the warp's query fragments over its dim slice (36
  // registers) are read from shared memory once, at the first tile, not
  // again at every tile.
  constexpr bool kQueriesInRegisters = kHeadTiles == 1;
  uint32_t queryFragments[kQueriesInRegisters ? kSliceDims / 16 : 1][4];
  const int sliceBegin = (warp / kTokenGroups) * kSliceDims;

  int buffer = 0;
  for (int t0 = begin, tile = 0; t0 < end;
       t0 += kTileTokens, buffer ^= 1, ++tile) {
    // The next tile streams in while this one is used (its buffer's last
    // readers passed the previous iteration's closing barrier).
    const bool next = t0 + kTileTokens < end;
    if (next)
      startTileCopy<kBulk, kTileTokens>(s.cache[buffer ^ 1], args, cacheMap,
                                        &s.loaded[buffer ^ 1], pages,
                                        t0 + kTileTokens, end);
    if constexpr (kBulk) {
      // Buffer b's loads are its tiles 0, 2, 4, ...: phase (tile / 2) % 2.
      awaitBarrier(&s.loaded[buffer], (tile / 2) % 2);
      // The chunk's last tile: rows past its end (other tokens' entries,
      // or stale ones) become zeros, so that 0-weighted values stay 0.
      if (t0 + kTileTokens > end)
        for (int i = threadIdx.x; i < kTileTokens * kEntryChunks;
             i += kThreads) {
          const int token = i / kEntryChunks;
          if (t0 + token >= end)
            *reinterpret_cast<uint4 *>(
                s.cache[buffer] +
                tileOffset<kTileTokens>(token, (i % kEntryChunks) * 8)) =
                make_uint4(0, 0, 0, 0);
        }
      awaitCopies<0>(); // the queries (cp.async: the only copies here)
    } else if (next) {
      awaitCopies<1>();
    } else {
      awaitCopies<0>();
    }
    __syncthreads();
    const uint8_t *cache = s.cache[buffer];
    if constexpr (kQueriesInRegisters)
      if (tile == 0)
#pragma unroll
        for (int step = 0; step < kSliceDims / 16; ++step)
          loadA(queryFragments[step], s.queries, kRowStride,
                sliceBegin + 16 * step, lane);

    // Scores, [heads, 576] x [576, 32 tokens]: warp w takes 16 tokens over
    // one slice of the dims; each key fragment serves every head tile.
    {
      constexpr int kChains = kHeadTiles == 1 ? 2 : 1; // mma in flight
      float score[kChains][kHeadTiles][2][4] = {};
      const int slice = warp / kTokenGroups;
#pragma unroll
      for (int step = 0; step < kSliceDims / 16; ++step) {
        uint32_t b[4];
        loadMatrices(b, cache + keyAt[step]);
#pragma unroll
        for (int m = 0; m < kHeadTiles; ++m) {
          uint32_t a[4];
          if constexpr (kQueriesInRegisters) {
#pragma unroll
            for (int i = 0; i < 4; ++i)
              a[i] = queryFragments[step][i];
          } else {
            loadA(a, s.queries + m * 16 * kRowStride, kRowStride,
                  sliceBegin + 16 * step, lane);
          }
          mma16816(score[step % kChains][m][0], a, b[0], b[1]);
          mma16816(score[step % kChains][m][1], a, b[2], b[3]);
        }
      }
      float *scores = s.scores[slice];
#pragma unroll
      for (int m = 0; m < kHeadTiles; ++m)
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            int head = m * 16 + (lane >> 2) + 8 * half;
            int token = (warp % kTokenGroups) * 16 + n * 8 + (lane & 3) * 2;
            float2 dot = make_float2(0.f, 0.f);
#pragma unroll
            for (int c = 0; c < kChains; ++c) {
              dot.x += score[c][m][n][2 * half];
              dot.y += score[c][m][n][2 * half + 1];
            }
            *reinterpret_cast<float2 *>(scores + head * kScoreStride + token) =
                dot;
          }
    }
    __syncthreads();

    // Online softmax: Shape::headThreads threads per head.
    {
      constexpr int kHeadThreads = Shape::headThreads;
      constexpr int kThreadTokens = Shape::threadTokens;
      static_assert(kThreadTokens % 2 == 0, "weights stored in pairs");
      int head = threadIdx.x / kHeadThreads, part = threadIdx.x % kHeadThreads;
      // Where this row's own tokens end (a prefill's causal rows).
      int rowEnd = end;
      if (args.rowLengths) {
        int perEntry = args.heads / args.rowHeads;
        rowEnd = min(end, args.rowLengths[size_t(seq) * perEntry +
                                          (head0 + head) / args.rowHeads]);
      }
      // Scale in the exponent: the scores unscaled, masked ones -infinity
      // (exp2 of the FMA gives 0), the maxima base-2 (scale * log2 e: the
      // statistics go out as natural-log ones, mlaRowStats). Else scaled
      // scores, masked ones -FLT_MAX.
      const float masked = scaleInExp ? -INFINITY : -FLT_MAX;
      float row[kThreadTokens] = {};
#pragma unroll
      for (int d = 0; d < kDimSlices; ++d)
        addSharedRow(row,
                     s.scores[d] + head * kScoreStride + part * kThreadTokens);
      float tileMax = masked;
#pragma unroll
      for (int i = 0; i < kThreadTokens; ++i) {
        row[i] = t0 + part * kThreadTokens + i >= rowEnd ? masked
                 : scaleInExp                            ? row[i]
                                                         : row[i] * args.scale;
        tileMax = fmaxf(tileMax, row[i]);
      }
#pragma unroll
      for (int offset = kHeadThreads / 2; offset > 0; offset /= 2)
        tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffff, tileMax, offset));
      if (scaleInExp)
        tileMax *= base2Scale;
      float newMax = fmaxf(runningMax, tileMax);
      float sum = 0;
      uint32_t weights[kThreadTokens / 2];
#pragma unroll
      for (int i = 0; i < kThreadTokens; i += 2) {
        float p[2];
#pragma unroll
        for (int j = 0; j < 2; ++j)
          p[j] = scaleInExp ? softmaxExp2(fmaf(row[i + j], base2Scale, -newMax))
                 : row[i + j] == -FLT_MAX ? 0.f
                                          : __expf(row[i + j] - newMax);
        // The sum counts the rounded weights that the tensor cores use.
        weights[i / 2] = packBf16(p[0], p[1]);
        const __nv_bfloat162 rounded =
            *reinterpret_cast<const __nv_bfloat162 *>(&weights[i / 2]);
        sum += __low2float(rounded) + __high2float(rounded);
      }
      storeSharedWords(weights,
                       s.probs + head * kProbStride + part * kThreadTokens);
#pragma unroll
      for (int offset = kHeadThreads / 2; offset > 0; offset /= 2)
        sum += __shfl_xor_sync(0xffffffff, sum, offset);
      float factor = scaleInExp ? softmaxExp2(runningMax - newMax)
                                : __expf(runningMax - newMax);
      runningSum = runningSum * factor + sum;
      runningMax = newMax;
      if (part == 0)
        s.rescale[head] = factor;
    }
    __syncthreads();

    // Weighted sum of the c_kv parts: [heads, 32] x [32, this warp's
    // columns]; each value fragment serves every head tile.
    {
      int row = lane >> 2;
#pragma unroll
      for (int m = 0; m < kHeadTiles; ++m) {
        float lo = s.rescale[m * 16 + row], hi = s.rescale[m * 16 + row + 8];
#pragma unroll
        for (int n = 0; n < kColumnTiles; ++n) {
          acc[m][n][0] *= lo;
          acc[m][n][1] *= lo;
          acc[m][n][2] *= hi;
          acc[m][n][3] *= hi;
        }
      }
#pragma unroll
      for (int k = 0; k < kTileTokens; k += 16) {
        uint32_t a[kHeadTiles][4];
#pragma unroll
        for (int m = 0; m < kHeadTiles; ++m)
          loadA(a[m], s.probs + m * 16 * kProbStride, kProbStride, k, lane);
#pragma unroll
        for (int n = 0; n < kColumnTiles; n += 2) {
          uint32_t b[4];
          loadMatricesTransposed(b, cache + valueAt[k / 16][n / 2]);
#pragma unroll
          for (int m = 0; m < kHeadTiles; ++m) {
            mma16816(acc[m][n], a[m], b[0], b[1]);
            mma16816(acc[m][n + 1], a[m], b[2], b[3]);
          }
        }
      }
    }
    // The buffer just read is the one the next iteration refills.
    __syncthreads();
  }
  awaitCopies<0>();

  // This chunk's unnormalized sums and statistics.
  size_t slot = (size_t(seq) * chunks + chunk) * args.heads + head0;
  float *out = partialSums + slot * kLatentRank;
  int row = lane >> 2;
#pragma unroll
  for (int m = 0; m < kHeadTiles; ++m)
#pragma unroll
    for (int n = 0; n < kColumnTiles; ++n) {
      int col = warp * kWarpColumns + n * 8 + (lane & 3) * 2;
      float *rows = out + (m * 16 + row) * kLatentRank + col;
      *reinterpret_cast<float2 *>(rows) =
          make_float2(acc[m][n][0], acc[m][n][1]);
      *reinterpret_cast<float2 *>(rows + 8 * kLatentRank) =
          make_float2(acc[m][n][2], acc[m][n][3]);
    }
  if (threadIdx.x % Shape::headThreads == 0)
    partialStats[slot + threadIdx.x / Shape::headThreads] =
        scaleInExp ? mlaRowStats(runningMax, runningSum)
                   : make_float2(runningMax, runningSum);
}

/// One block per (sequence, head): merges the chunks.
__global__ void mlaDecodeCombine(MlaDecodeArgs args, int chunks,
                                 const float *partialSums,
                                 const float2 *partialStats) {
  awaitPriorKernels();
  const int head = blockIdx.x, seq = blockIdx.y;
  float maxAll = -FLT_MAX;
  for (int c = 0; c < chunks; ++c)
    maxAll = fmaxf(
        maxAll, partialStats[(size_t(seq) * chunks + c) * args.heads + head].x);
  float total = 0;
  float sums[kLatentRank / 128] = {};
  for (int c = 0; c < chunks; ++c) {
    size_t slot = (size_t(seq) * chunks + c) * args.heads + head;
    float2 stats = partialStats[slot];
    if (stats.x == -FLT_MAX)
      continue;
    float weight = __expf(stats.x - maxAll);
    total += weight * stats.y;
    const float *part = partialSums + slot * kLatentRank;
#pragma unroll
    for (int i = 0; i < kLatentRank / 128; ++i)
      sums[i] += weight * part[threadIdx.x + i * 128];
  }
  float inverse = total > 0 ? 1.f / total : 0.f;
  const size_t row = (size_t(seq) * args.heads + head) * kLatentRank;
  if (args.outputF32) {
#pragma unroll
    for (int i = 0; i < kLatentRank / 128; ++i)
      args.outputF32[row + threadIdx.x + i * 128] = sums[i] * inverse;
    return;
  }
#pragma unroll
  for (int i = 0; i < kLatentRank / 128; ++i)
    args.output[row + threadIdx.x + i * 128] =
        __float2bfloat16(sums[i] * inverse);
}

/// Head tiles per block: 4 (64 heads, the cache read once per 64 heads)
/// where the heads allow, else 1; the split over the sequence fills the
/// GPU either way.
int headTiles(const MlaDecodeArgs &args, int /*smCount*/) {
  return args.heads % 64 == 0 ? 4 : 1;
}

/// Tokens a tile of the warp kernel: 64 for a block of 16 heads where a
/// page holds whole tiles of 64 (MELT_CUDA_MLA_LARGE_TILES=0: 32), else
/// 32 (4 head tiles' queries and scores leave no room for two 64-token
/// buffers).
int warpTileTokens(const MlaDecodeArgs &args, int smCount) {
  static const bool large = envSwitch("MELT_CUDA_MLA_LARGE_TILES", true);
  return large && headTiles(args, smCount) == 1 &&
                 args.pageSize % kLargeTileTokens == 0
             ? kLargeTileTokens
             : kSmallTileTokens;
}

size_t sharedBytesFor(int tiles, int tileTokens) {
  return tiles == 4                       ? sharedBytes<4, kSmallTileTokens>()
         : tileTokens == kLargeTileTokens ? sharedBytes<1, kLargeTileTokens>()
                                          : sharedBytes<1, kSmallTileTokens>();
}

/// Chunks per sequence: as many as fill one wave of resident blocks (a
/// second, partial wave would leave most SMs idle at its end), but at least
/// kMinChunkTokens each at the table's capacity (a shorter sequence is
/// spread over them by its length, mlaDecodeChunks), so that the queries'
/// load and the partial sums a chunk writes stay small beside the cache it
/// reads.
/// 128 tokens: a 16-head block's queries (18 KB) and partial sums (32 KB)
/// are a third of its 144 KB of cache, which one sequence over a few
/// blocks cannot fill the GPU without (b1, 16 heads, 4096 tokens on the
/// H200: 35.1 us at 512 tokens a chunk, 22.2 at 128).
constexpr int kMinChunkTokens = 128;

int chunkCount(const MlaDecodeArgs &args, int smCount, int &chunkTokens) {
  constexpr int kSharedPerSm = 228 * 1024, kReservedPerBlock = 1024;
  const bool warpgroups = mlaDecodeOnWarpgroups(args);
  const int tileTokens =
      warpgroups ? kWarpgroupTileTokens : warpTileTokens(args, smCount);
  const int headsPerBlock =
      warpgroups ? kWarpgroupHeads : 16 * headTiles(args, smCount);
  const size_t blockShared =
      warpgroups ? mlaWarpgroupSharedBytes()
                 : sharedBytesFor(headTiles(args, smCount), tileTokens);
  int residentPerSm =
      std::max(1, kSharedPerSm / int(blockShared + kReservedPerBlock));
  int tiles = std::max(1, (args.maxLength + tileTokens - 1) / tileTokens);
  int blocks = args.batch * (args.heads / headsPerBlock);
  int chunks =
      args.chunksPerSequence > 0
          ? std::min(args.chunksPerSequence, tiles)
          : std::clamp(residentPerSm * smCount / blocks, 1,
                       std::max(1, tiles * tileTokens / kMinChunkTokens));
  int tilesPerChunk = (tiles + chunks - 1) / chunks;
  chunkTokens = tilesPerChunk * tileTokens;
  return (tiles + tilesPerChunk - 1) / tilesPerChunk;
}

/// The split of a launch and its workspace: per (sequence, chunk, head) an
/// unnormalized [512] sum, then its (max, sum) statistics.
struct SplitPlan {
  int chunks = 0, chunkTokens = 0;
  size_t slots = 0;
  SplitPlan(const MlaDecodeArgs &args, int smCount) {
    chunks = chunkCount(args, smCount, chunkTokens);
    slots = size_t(args.batch) * chunks * args.heads;
  }
  size_t workspaceBytes() const {
    return slots * (kLatentRank * sizeof(float) + sizeof(float2));
  }
  float *sums(void *workspace) const { return static_cast<float *>(workspace); }
  float2 *stats(void *workspace) const {
    return reinterpret_cast<float2 *>(sums(workspace) + slots * kLatentRank);
  }
};

template <int kHeadTiles, bool kBulk, int kTileTokens>
cudaError_t launchChunks(const MlaDecodeArgs &args, int chunks, float *sums,
                         float2 *stats, const CUtensorMap &map,
                         cudaStream_t stream) {
  static const bool scaleInExp = envSwitch("MELT_CUDA_MLA_SCALE_IN_EXP", true);
  const size_t shared = sharedBytes<kHeadTiles, kTileTokens>();
  cudaError_t error = cudaFuncSetAttribute(
      mlaDecodeChunks<kHeadTiles, kBulk, kTileTokens>,
      cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared));
  if (error != cudaSuccess)
    return error;
  dim3 grid(chunks, args.heads / (16 * kHeadTiles), args.batch);
  launchOverlapped(mlaDecodeChunks<kHeadTiles, kBulk, kTileTokens>, grid,
                   kThreads, shared, stream, args, chunks, sums, stats,
                   scaleInExp, map);
  return cudaGetLastError();
}

/// The warp kernel with its tiles by TMA where a tensor map over the cache
/// can be made, else by cp.async.
template <int kHeadTiles, int kTileTokens>
cudaError_t launchWarpChunks(const MlaDecodeArgs &args, int chunks, float *sums,
                             float2 *stats, cudaStream_t stream) {
  alignas(64) CUtensorMap map{};
  return mlaCacheTensorMap(args, kTileTokens, map)
             ? launchChunks<kHeadTiles, true, kTileTokens>(args, chunks, sums,
                                                           stats, map, stream)
             : launchChunks<kHeadTiles, false, kTileTokens>(args, chunks, sums,
                                                            stats, map, stream);
}

} // namespace

size_t mlaDecodeWorkspaceBytes(const MlaDecodeArgs &args, int smCount) {
  return SplitPlan(args, smCount).workspaceBytes();
}

int mlaDecodeChunkCount(const MlaDecodeArgs &args, int smCount) {
  return SplitPlan(args, smCount).chunks;
}

cudaError_t mlaDecodeChunks(const MlaDecodeArgs &args, void *workspace,
                            size_t workspaceBytes, int smCount,
                            cudaStream_t stream, MlaDecodePartials &partials) {
  if (args.heads <= 0 || args.heads % 16 != 0 ||
      args.pageSize % kSmallTileTokens != 0 || args.batch <= 0 ||
      args.maxLength <= 0 ||
      args.maxLength > args.pageSize * args.maxPagesPerSequence ||
      (args.rowLengths &&
       (args.rowHeads <= 0 || args.heads % args.rowHeads != 0)))
    return cudaErrorInvalidValue;
  SplitPlan plan(args, smCount);
  if (workspaceBytes < plan.workspaceBytes())
    return cudaErrorInvalidValue;
  float *sums = plan.sums(workspace);
  float2 *stats = plan.stats(workspace);
  cudaError_t error =
      mlaDecodeOnWarpgroups(args)
          ? launchMlaWarpgroupChunks(args, plan.chunkTokens, plan.chunks, sums,
                                     stats, stream)
      : headTiles(args, smCount) == 4
          ? launchWarpChunks<4, kSmallTileTokens>(args, plan.chunks, sums,
                                                  stats, stream)
      : warpTileTokens(args, smCount) == kLargeTileTokens
          ? launchWarpChunks<1, kLargeTileTokens>(args, plan.chunks, sums,
                                                  stats, stream)
          : launchWarpChunks<1, kSmallTileTokens>(args, plan.chunks, sums,
                                                  stats, stream);
  if (error != cudaSuccess)
    return error;
  partials = {plan.chunks, sums, stats};
  return cudaSuccess;
}

cudaError_t mlaDecode(const MlaDecodeArgs &args, void *workspace,
                      size_t workspaceBytes, int smCount, cudaStream_t stream) {
  MlaDecodePartials partials;
  if (cudaError_t error = mlaDecodeChunks(args, workspace, workspaceBytes,
                                          smCount, stream, partials);
      error != cudaSuccess)
    return error;
  launchOverlapped(mlaDecodeCombine, dim3(args.heads, args.batch), 128, 0,
                   stream, args, partials.chunks, partials.sums,
                   partials.stats);
  return cudaGetLastError();
}

bool mlaDecodeBulkCopies(const MlaDecodeArgs &args) {
  CUtensorMap map;
  return mlaCacheTensorMap(args,
                           mlaDecodeOnWarpgroups(args)
                               ? kWarpgroupTileTokens
                               : warpTileTokens(args, /*smCount=*/0),
                           map);
}

} // namespace melt::rt::cuda
