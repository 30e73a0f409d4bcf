//===- CausalAttention.cu - a prefill's causal attention, fused -----------===//
#include "cuda/CausalAttention.h"

#include "EnvSwitch.h"

#include "cuda/AsyncCopy.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/Wgmma.cuh"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

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

/// A launch's runs (a kernel parameter: no copy to the device).
struct CausalRunList {
  int count = 0, blocks = 0; // runs; query blocks of the longest
  CausalRunOperands run[kCausalMaxRuns];
};

/// Grid blocks x heads x runs (blocks: of the longest run), 128 threads;
/// block i takes query block blocks - 1 - i / (heads x runs) (the last
/// queries of every run and head first), head and run from the rest;
/// blocks past a run's queries return. Warp w holds queries [q0, q0 +
/// 16) of the block as A fragments, the scores of a key tile (8 n-tiles of
/// C fragments), and its output rows (kValue / 8 C fragments); lane (g, t)
/// keeps rows g and g + 8's running maximum and its share of their sums.
/// Key and value tiles in two buffers: the next tile's copies are in flight
/// while the block works on this one.
template <int kNope, int kRope, int kValue>
__global__ void __launch_bounds__(kThreads)
    causalAttentionKernel(const float *qNope, const float *qRope,
                          const __grid_constant__ CausalRunList runs, int heads,
                          float scaleLog2, float *out) {
  using W = Widths<kNope, kRope, kValue>;
  extern __shared__ __align__(16) uint8_t sharedBytes[];
  auto keyTileOf = [&](int buffer) {
    return reinterpret_cast<__nv_bfloat16 *>(sharedBytes) +
           buffer * W::bufferElements;
  };
  awaitPriorKernels();
  // The blocks of the last queries walk the most keys: they go first.
  const int perBlock = heads * runs.count;
  const int block = runs.blocks - 1 - int(blockIdx.x) / perBlock;
  const int h = int(blockIdx.x) % perBlock % heads;
  const CausalRunOperands &operands =
      runs.run[int(blockIdx.x) % perBlock / heads];
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
    const size_t th = size_t(run.first + (in ? i : 0)) * heads + h;
#pragma unroll
    for (int s = 0; s < W::qkSteps; ++s) {
      const int c = 16 * s + 2 * t;
      const float *row =
          c < kNope ? qNope + th * kNope + c : qRope + th * kRope + (c - kNope);
      const float2 lo =
          in ? *reinterpret_cast<const float2 *>(row) : make_float2(0.f, 0.f);
      const float2 hi = in ? *reinterpret_cast<const float2 *>(row + 8)
                           : make_float2(0.f, 0.f);
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
  const __nv_bfloat16 *headKeys = keys + size_t(h) * run.keys * W::qk;
  const __nv_bfloat16 *headValues = values + size_t(h) * run.keys * kValue;
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
      float m = tileMax[half];
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
      const float next = fmaxf(rowMax[half], m);
      // A row that has seen no key yet keeps zero sums (exp2(-inf) = 0).
      reference[half] = next == -INFINITY ? 0.f : next;
      const float correction = exp2f(rowMax[half] - reference[half]);
      rowMax[half] = next;
      rowSum[half] *= correction;
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
        const float p = exp2f(s[j][e] - reference[e / 2]);
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

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = rowSum[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int i = q0 + g + 8 * half;
    if (i >= run.count)
      continue;
    const float norm = sum > 0.f ? 1.f / sum : 0.f;
    float *row = out + (size_t(run.first + i) * heads + h) * kValue + 2 * t;
#pragma unroll
    for (int n = 0; n < W::valueTiles; ++n)
      *reinterpret_cast<float2 *>(row + n * 8) =
          make_float2(o[n][2 * half] * norm, o[n][2 * half + 1] * norm);
  }
}

/// The warpgroup kernel's shapes: a block of two warpgroups takes 128
/// queries of one head (64 a warpgroup) and walks the keys 128 at a time;
/// every operand of its products in shared memory in the 128-byte swizzle
/// (Wgmma.cuh), as blocks of 64 dims: the queries ([64 x 64] blocks of
/// 8 KB, three for their 192 dims a warpgroup), and two stages of a key
/// tile ([128 x 64] blocks of 16 KB, three) and its value tile (two of 64
/// value columns). With 64-key tiles the scores' m64n64 products read 4 KB
/// of shared memory per 131 kFLOP, as much as shared memory delivers: the
/// kernel ran at 149 TFLOP/s against the warp kernel's 194.
namespace warpgroups {
constexpr int kQk = 192, kValue = 128;
constexpr int kBlockBytes = 64 * kSwizzleRowBytes;
constexpr int kQkBlocks = kQk / 64, kValueBlocks = kValue / 64;
constexpr int kQkChunks = kQk / 8, kValueChunks = kValue / 8; // 16 bytes
constexpr int kGroupQueryBytes = kQkBlocks * kBlockBytes;
/// A block of kGroups warpgroups; a tile of kKeys keys in kStages stages.
template <int kGroups, int kKeys, int kStages> struct Tiles {
  static constexpr int threads = kGroups * 128, queries = kGroups * 64;
  static constexpr int blockBytes = kKeys * kSwizzleRowBytes;
  static constexpr int keyBytes = kQkBlocks * blockBytes;
  static constexpr int stageBytes = keyBytes + kValueBlocks * blockBytes;
  static constexpr size_t sharedBytes = size_t(kGroups) * kGroupQueryBytes +
                                        kStages * size_t(stageBytes) +
                                        kSwizzleAtomBytes;
};
} // namespace warpgroups

/// causalAttentionKernel's work on wgmma (sm_90a): grid and block order as
/// there, with 128 queries a block. Warpgroup w scores its 64 queries
/// against a key tile (m64n128, 12 k16 steps of shared-memory operands),
/// keeps the online softmax in registers as the warp kernel does (the same
/// fragment layout), and adds the probabilities times the values with the
/// probabilities as the A operand in registers (m64n128, 8 k16 steps of
/// MN-major values). A tile's weighted sum and the next tile's scores are
/// issued back to back; the tile after that streams into the first's
/// stage once both warpgroups' sums of it are done. A warpgroup skips the
/// softmax and sum of tiles past its last query's position (the block's
/// other warpgroup needs them), not their scores: scores issued on a
/// condition made ptxas serialize every wgmma of the kernel (C7515).
template <int kGroups, int kKeys, int kStages>
__global__ void __launch_bounds__(kGroups * 128, 2 / kGroups)
    causalAttentionWarpgroupKernel(const float *qNope, const float *qRope,
                                   const __grid_constant__ CausalRunList runs,
                                   int heads, float scaleLog2, float *out) {
  using namespace warpgroups;
  // (The warp kernel's constants of these names, hidden.)
  using T = Tiles<kGroups, kKeys, kStages>;
  constexpr int kThreads = T::threads, kQueries = T::queries;
  constexpr int kTileBlockBytes = T::blockBytes, kKeyBytes = T::keyBytes,
                kStageBytes = T::stageBytes;
  extern __shared__ uint8_t sharedRaw[];
  uint8_t *shared = sharedRaw + (kSwizzleAtomBytes -
                                 sharedAddress(sharedRaw) % kSwizzleAtomBytes) %
                                    kSwizzleAtomBytes;
  uint8_t *queryTiles = shared;
  uint8_t *stages = shared + kGroups * kGroupQueryBytes;
  awaitPriorKernels();
  const int perBlock = heads * runs.count;
  const int block = runs.blocks - 1 - int(blockIdx.x) / perBlock;
  const int h = int(blockIdx.x) % perBlock % heads;
  const CausalRunOperands &operands =
      runs.run[int(blockIdx.x) % perBlock / heads];
  const CausalRun &run = operands.run;
  if (block * kQueries >= run.count)
    return;
  const int group = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int q0 = block * kQueries;
  const int tiles = (run.position + min(run.count, q0 + kQueries) - 1) / kKeys + 1;
  const int groupFirst = q0 + group * 64;
  const int groupLast = min(run.count, groupFirst + 64) - 1;
  const int groupTiles =
      groupLast >= groupFirst ? (run.position + groupLast) / kKeys + 1 : 0;
  const __nv_bfloat16 *headKeys =
      operands.keys + size_t(h) * run.keys * kQk;
  const __nv_bfloat16 *headValues =
      operands.values + size_t(h) * run.keys * kValue;

  // Tile `tile`'s keys and values into stage tile % kStages (rows past the
  // keys repeat the last: finite values, never weighted), as one group of
  // copies; past the last tile an empty group (every wait below then
  // counts the same groups).
  auto startTile = [&](int tile) {
    if (tile >= tiles) {
      commitCopies();
      return;
    }
    uint8_t *to = stages + (tile % kStages) * kStageBytes;
    constexpr int kRowChunks = kQkChunks + kValueChunks;
    for (int e = threadIdx.x; e < kKeys * kRowChunks; e += kThreads) {
      const int r = e / kRowChunks, c = e % kRowChunks;
      const size_t key = size_t(min(tile * kKeys + r, run.keys - 1));
      if (c < kQkChunks)
        copyAsync16(to + (c / 8) * kTileBlockBytes + swizzledOffset(r, c % 8),
                    headKeys + key * kQk + c * 8);
      else
        copyAsync16(to + kKeyBytes + ((c - kQkChunks) / 8) * kTileBlockBytes +
                        swizzledOffset(r, (c - kQkChunks) % 8),
                    headValues + key * kValue + (c - kQkChunks) * 8);
    }
    commitCopies();
  };
#pragma unroll
  for (int tile = 0; tile < kStages; ++tile)
    startTile(tile);
  // The block's queries, rounded to BF16 (rows past the run: zeros): every
  // load of a thread in flight before its first store (a loop of load,
  // round, store waited a memory latency per chunk, before every tile).
  constexpr int kQueryLoads = kQueries * kQkChunks / kThreads;
  static_assert(kQueries * kQkChunks % kThreads == 0, "whole loads");
  float4 lo[kQueryLoads], hi[kQueryLoads];
#pragma unroll
  for (int u = 0; u < kQueryLoads; ++u) {
    const int e = threadIdx.x + u * kThreads;
    const int row = e / kQkChunks, c = e % kQkChunks, i = q0 + row;
    lo[u] = hi[u] = make_float4(0.f, 0.f, 0.f, 0.f);
    if (i < run.count) {
      const size_t th = size_t(run.first + i) * heads + h;
      const float *from = c < 16 ? qNope + th * 128 + c * 8
                                 : qRope + th * 64 + (c - 16) * 8;
      lo[u] = *reinterpret_cast<const float4 *>(from);
      hi[u] = *reinterpret_cast<const float4 *>(from + 4);
    }
  }
#pragma unroll
  for (int u = 0; u < kQueryLoads; ++u) {
    const int e = threadIdx.x + u * kThreads;
    const int row = e / kQkChunks, c = e % kQkChunks;
    *reinterpret_cast<uint4 *>(queryTiles + (row / 64) * kGroupQueryBytes +
                               (c / 8) * kBlockBytes +
                               swizzledOffset(row % 64, c % 8)) =
        make_uint4(packBf16(lo[u].x, lo[u].y), packBf16(lo[u].z, lo[u].w),
                   packBf16(hi[u].x, hi[u].y), packBf16(hi[u].z, hi[u].w));
  }
  awaitCopies<kStages - 1>(); // tile 0
  fenceSharedForWgmma();
  __syncthreads();

  const uint64_t queriesAt =
      kMajorDescriptor(queryTiles + group * kGroupQueryBytes);
  const uint64_t keysAt = kMajorDescriptor(stages);
  const uint64_t valuesAt =
      mnMajorDescriptor(stages + kKeyBytes, kTileBlockBytes);
  auto inStage = [](uint64_t descriptor, int tile) {
    return advanced(descriptor, (tile % kStages) * kStageBytes);
  };
  float score[kKeys / 2];
  auto issueScores = [&](int tile) {
    const uint64_t keys = inStage(keysAt, tile);
    wgmmaFence();
#pragma unroll
    for (int step = 0; step < kQk / 16; ++step) {
      const uint64_t a = advanced(queriesAt, (step / 4) * kBlockBytes +
                                                 (step % 4) * 32),
                     b = advanced(keys, (step / 4) * kTileBlockBytes +
                                            (step % 4) * 32);
      if constexpr (kKeys == 128)
        wgmma64x128(score, a, b, step > 0);
      else
        wgmma64x64(score, a, b, step > 0);
    }
    wgmmaCommit();
  };
  issueScores(0);
  wgmmaWait<0>();

  float o[64];
#pragma unroll
  for (int v = 0; v < 64; ++v)
    o[v] = 0.f;
  float rowMax[2] = {-INFINITY, -INFINITY}, rowSum[2] = {0.f, 0.f};
  // Positions of this thread's rows g and g + 8 of its warp.
  const int position[2] = {run.position + groupFirst + 16 * warp + g,
                           run.position + groupFirst + 16 * warp + g + 8};
  for (int tile = 0; tile < tiles; ++tile) {
    if (tile < groupTiles) { // uniform in the warpgroup
      const int first = tile * kKeys;
      // Keys past some row's position only on the warpgroup's last tiles.
      const bool masked = first + kKeys - 1 > run.position + groupFirst;
      float tileMax[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int v = 0; v < kKeys / 2; ++v) {
        const int key = first + 8 * (v / 4) + 2 * t + (v & 1);
        const float x = !masked || key <= position[(v / 2) % 2]
                            ? score[v] * scaleLog2
                            : -INFINITY;
        score[v] = x;
        tileMax[(v / 2) % 2] = fmaxf(tileMax[(v / 2) % 2], x);
      }
      float reference[2];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float m = tileMax[half];
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        const float next = fmaxf(rowMax[half], m);
        // A row that has seen no key yet keeps zero sums (exp2(-inf) = 0).
        reference[half] = next == -INFINITY ? 0.f : next;
        const float correction = exp2f(rowMax[half] - reference[half]);
        rowMax[half] = next;
        rowSum[half] *= correction;
#pragma unroll
        for (int n = 0; n < 16; ++n) {
          o[4 * n + 2 * half] *= correction;
          o[4 * n + 2 * half + 1] *= correction;
        }
      }
#pragma unroll
      for (int v = 0; v < kKeys / 2; ++v) {
        const float p = exp2f(score[v] - reference[(v / 2) % 2]);
        score[v] = p;
        rowSum[(v / 2) % 2] += p;
      }
      // The scores' fragments of keys [16 k, 16 k + 16) are the A
      // fragment of that k16 step.
      uint32_t a[kKeys / 16][4];
#pragma unroll
      for (int k = 0; k < kKeys / 16; ++k)
#pragma unroll
        for (int r = 0; r < 4; ++r)
          a[k][r] = packBf16(score[8 * k + 2 * r], score[8 * k + 2 * r + 1]);
      const uint64_t values = inStage(valuesAt, tile);
      wgmmaFence();
#pragma unroll
      for (int k = 0; k < kKeys / 16; ++k)
        wgmma64x128RegisterA(o, a[k],
                             advanced(values, k * 2 * kSwizzleAtomBytes));
      wgmmaCommit();
    }
    if (tile + 1 == tiles) {
      wgmmaWait<0>();
      break;
    }
    // Tile + 1 landed (those after it may be in flight), shown to the
    // tensor cores; its scores behind this tile's sum.
    awaitCopies<kStages - 2>();
    fenceSharedForWgmma();
    __syncthreads();
    // Both warpgroups' sums of this tile done: its stage may be refilled.
    issueScores(tile + 1);
    wgmmaWait<1>();
    __syncthreads();
    startTile(tile + kStages);
    wgmmaWait<0>();
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = rowSum[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int i = groupFirst + 16 * warp + g + 8 * half;
    if (i >= run.count)
      continue;
    const float norm = sum > 0.f ? 1.f / sum : 0.f;
    float *row = out + (size_t(run.first + i) * heads + h) * kValue + 2 * t;
#pragma unroll
    for (int n = 0; n < 16; ++n)
      *reinterpret_cast<float2 *>(row + n * 8) = make_float2(
          o[4 * n + 2 * half] * norm, o[4 * n + 2 * half + 1] * norm);
  }
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
                             scale, out, stream, kernel);
}

/// The kernel a launch takes: the warpgroup kernel unless
/// MELT_CUDA_CAUSAL_WARPGROUPS=0 (or the caller names one).
static bool onWarpgroups(CausalKernel kernel) {
  static const bool byDefault =
      melt::rt::envSwitch("MELT_CUDA_CAUSAL_WARPGROUPS", true);
  return kernel == CausalKernel::Default ? byDefault
                                         : kernel == CausalKernel::Warpgroups;
}

cudaError_t melt::rt::cuda::causalAttentionBf16(
    const float *qNope, const float *qRope, const CausalRunOperands *runs,
    int runCount, int heads, int nope, int rope, int valueDim, float scale,
    float *out, cudaStream_t stream, CausalKernel kernel) {
  if (!causalAttentionFits(nope, rope, valueDim) || heads <= 0 ||
      runCount < 0 || runCount > kCausalMaxRuns)
    return cudaErrorInvalidValue;
  const bool warpgroups = onWarpgroups(kernel);
  const char *tiling = std::getenv("MELT_CUDA_CAUSAL_TILING");
  const std::string chosen = tiling ? tiling : "2x128x2";
  const int blockQueries = !warpgroups ? kQueries : chosen[0] == '1' ? 64 : 128;
  CausalRunList list;
  for (int i = 0; i < runCount; ++i) {
    const CausalRun &run = runs[i].run;
    if (run.count < 0 || run.position < 0 ||
        run.keys < run.position + run.count)
      return cudaErrorInvalidValue;
    if (run.count == 0) // nothing to attend: left out of the grid
      continue;
    list.run[list.count++] = runs[i];
    list.blocks = std::max(list.blocks,
                           (run.count + blockQueries - 1) / blockQueries);
  }
  if (list.count == 0)
    return cudaSuccess;
  const unsigned grid = unsigned(list.blocks) * heads * list.count;
  const float scaleLog2 = float(scale * M_LOG2E);
  if (warpgroups) {
    auto launch = [&](auto kernel, auto tiles) {
      using T = decltype(tiles);
      if (cudaError_t e = cudaFuncSetAttribute(
              kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
              int(T::sharedBytes));
          e != cudaSuccess)
        return e;
      return launchOverlapped(kernel, dim3(grid), T::threads, T::sharedBytes,
                              stream, qNope, qRope, list, heads, scaleLog2,
                              out);
    };
    using namespace warpgroups;
    if (chosen == "1x64x2")
      return launch(causalAttentionWarpgroupKernel<1, 64, 2>, Tiles<1, 64, 2>{});
    if (chosen == "2x64x4")
      return launch(causalAttentionWarpgroupKernel<2, 64, 4>, Tiles<2, 64, 4>{});
    return launch(causalAttentionWarpgroupKernel<2, 128, 2>,
                  Tiles<2, 128, 2>{});
  }
  auto warpKernel = causalAttentionKernel<128, 64, 128>;
  constexpr size_t shared = Widths<128, 64, 128>::sharedBytes;
  // Per launch (per current device; a prefill's few launches).
  if (cudaError_t e = cudaFuncSetAttribute(
          warpKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared));
      e != cudaSuccess)
    return e;
  return launchOverlapped(warpKernel, dim3(grid), kThreads, shared, stream,
                          qNope, qRope, list, heads, scaleLog2, out);
}
