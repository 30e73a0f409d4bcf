//===- CausalAttentionWarpgroups.cu - a prefill's causal attention, wgmma -===//
//
// The prefill's causal attention on Hopper's warpgroup MMA, for
// DeepSeek's widths (query and key 128 + 64, value 128). A block takes 128
// queries of one head: two consumer warpgroups of 64 and one producer
// warpgroup.
//
// - The producer warpgroup's first thread asks TMA for each 64-key tile's
//   keys ([64 x 192]) and values ([64 x 128]) of the head, into a ring of
//   four stages in the 128-byte swizzle, counted on the stage's `full`
//   barrier (each run's keys and values a 3-D map: heads, keys, width, so
//   rows past the run's keys read as zeros); it refills a stage once both
//   warpgroups gave it back on its `empty` barrier. (Until session 51 the
//   whole warpgroup copied them with cp.async, three stages, each handed
//   over once the next one's copies were out.)
// - The block's 128 queries go into shared memory once, rounded to BF16:
//   each consumer warpgroup stages its rows' nope part, every thread of
//   the block (the producer's too, its first tiles' copies in flight) a
//   share of the rope part, rotated where asked.
// - A consumer warpgroup, per tile: the scores Q K^T (m64n64, both
//   operands from shared memory), the online softmax in registers, and
//   O += P V (m64n128, P from registers, V read MN-major).
// - Within a warpgroup the softmax of tile j runs while the tensor cores
//   still work on tile j - 1's P V: the scores of tile j and the sum of
//   tile j - 1 are issued together, the wait is for the scores alone, and
//   the output is rescaled once the sum is done (FlashAttention-3's
//   intra-warpgroup overlap). No block-wide barrier in the loop: the two
//   warpgroups drift apart, so that one's softmax runs under the other's
//   products.
//
// The mma.sync kernel (CausalAttention.cu) keeps 16 queries a warp and
// reads every key tile from shared memory once a warp; here a tile's keys
// go to the tensor cores once per 64 queries.
//
//===----------------------------------------------------------------------===//
#include "cuda/CausalAttentionParts.cuh"

#include "cuda/BulkTensorCopy.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/Exp2.cuh"
#include "cuda/NamedBarrier.cuh"
#include "cuda/RopeRotation.cuh"
#include "cuda/TensorMaps.h"
#include "cuda/Wgmma.cuh"

#include <cmath>

using namespace melt::rt::cuda;

namespace {

constexpr int kNope = 128, kRope = 64, kQk = kNope + kRope, kValue = 128;
constexpr int kConsumers = 2, kGroupQueries = 64;
static_assert(kConsumers * kGroupQueries == kCausalWarpgroupQueries,
              "a block's queries");
constexpr int kKeys = 64, kStages = 4;
constexpr int kProducerThreads = 128;
constexpr int kThreads = kConsumers * 128 + kProducerThreads;
/// A [64 rows x 64] BF16 block in the 128-byte swizzle.
constexpr int kBlockBytes = 64 * kSwizzleRowBytes;
constexpr int kQkBlocks = kQk / 64, kValueBlocks = kValue / 64;
constexpr int kGroupQueryBytes = kQkBlocks * kBlockBytes;
constexpr int kKeyBytes = kQkBlocks * kBlockBytes;
constexpr int kStageBytes = kKeyBytes + kValueBlocks * kBlockBytes;
/// Shared memory: each warpgroup's queries, the stages, their barriers.
constexpr int kStagesAt = kConsumers * kGroupQueryBytes;
constexpr int kBarriersAt = kStagesAt + kStages * kStageBytes;
constexpr size_t kSharedBytes =
    kBarriersAt + 2 * kStages * sizeof(uint64_t) + kSwizzleAtomBytes;

/// Eight values of a query row at element `at`, F32 or (kBf16) BF16.
template <bool kBf16>
__device__ __forceinline__ void loadEight(const void *rows, size_t at,
                                          float (&v)[8]) {
  if constexpr (kBf16) {
    const uint4 raw = *reinterpret_cast<const uint4 *>(
        static_cast<const __nv_bfloat16 *>(rows) + at);
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const float2 pair = __bfloat1622float2(
          *reinterpret_cast<const __nv_bfloat162 *>(&words[w]));
      v[2 * w] = pair.x, v[2 * w + 1] = pair.y;
    }
  } else {
    const float *from = static_cast<const float *>(rows) + at;
    const float4 lo = *reinterpret_cast<const float4 *>(from),
                 hi = *reinterpret_cast<const float4 *>(from + 4);
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w;
    v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
  }
}

/// Where query row `row` (0..127 of the block) keeps 16-byte chunk `c`
/// (0..23) of its 192 values: its warpgroup's tile, three swizzled
/// [64 x 64] blocks.
__device__ __forceinline__ uint8_t *queryChunkAt(uint8_t *shared, int row,
                                                 int c) {
  return shared + (row / kGroupQueries) * kGroupQueryBytes +
         (c / 8) * kBlockBytes + swizzledOffset(row % kGroupQueries, c % 8);
}

/// Eight query values rounded to BF16 into their chunk.
__device__ __forceinline__ void storeChunk(uint8_t *at, const float (&v)[8]) {
  *reinterpret_cast<uint4 *>(at) =
      make_uint4(packBf16(v[0], v[1]), packBf16(v[2], v[3]),
                 packBf16(v[4], v[5]), packBf16(v[6], v[7]));
}

/// The nope part of a warpgroup's 64 queries (rows first .. first + 63 of
/// the block; zeros past the run), by its 128 threads, every load out
/// before the first store.
template <bool kBf16>
__device__ __forceinline__ void
storeNopeChunks(const QuerySource &query, const CausalRun &run, int h,
                int heads, int q0, int group, uint8_t *shared, int thread) {
  constexpr int kChunks = kNope / 8, kLoads = kGroupQueries * kChunks / 128;
  static_assert(kGroupQueries * kChunks % 128 == 0, "whole loads");
  float v[kLoads][8];
#pragma unroll
  for (int u = 0; u < kLoads; ++u) {
    const int e = thread + u * 128, row = e / kChunks, c = e % kChunks;
    const int i = q0 + group * kGroupQueries + row;
#pragma unroll
    for (int k = 0; k < 8; ++k)
      v[u][k] = 0.f;
    if (i < run.count)
      loadEight<kBf16>(
          query.nope,
          (size_t(run.first + i) * heads + h) * query.nopeStride + 8 * c, v[u]);
  }
#pragma unroll
  for (int u = 0; u < kLoads; ++u) {
    const int e = thread + u * 128, row = e / kChunks, c = e % kChunks;
    storeChunk(queryChunkAt(shared, group * kGroupQueries + row, c), v[u]);
  }
}

/// The rope part of the block's 128 queries, rotated where the source asks
/// (double-precision angles, the rope kernel's arithmetic), by every thread
/// of the block: the angles are most of the block's start, and a
/// warpgroup's threads each taking chunks of both parts (a third of them
/// rope) made its warps run the angles of every chunk. load() sends a
/// thread's loads out at once and store() waits for them, so that a
/// consumer's nope loads go out between the two: the block's start waits
/// one round trip for its queries, not one for each chunk of rope a thread
/// takes in turn (session 53's source counters: the stalls on those loads
/// were a fifth of the consumers' samples).
template <bool kBf16> struct RopeChunks {
  static constexpr int kChunks = kRope / 8;
  static constexpr int kAll = kCausalWarpgroupQueries * kChunks;
  static constexpr int kLoads = (kAll + kThreads - 1) / kThreads;
  float v[kLoads][8];
  int32_t position[kLoads];

  __device__ __forceinline__ void load(const QuerySource &query,
                                       const CausalRun &run, int h, int heads,
                                       int q0) {
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const int e = int(threadIdx.x) + u * kThreads;
      const int row = e / kChunks, c = e % kChunks, i = q0 + row;
#pragma unroll
      for (int k = 0; k < 8; ++k)
        v[u][k] = 0.f;
      position[u] = 0;
      if (e < kAll && i < run.count) {
        loadEight<kBf16>(
            query.rope,
            (size_t(run.first + i) * heads + h) * query.ropeStride + 8 * c,
            v[u]);
        if (query.rotation.positions)
          position[u] = query.rotation.positions[run.first + i];
      }
    }
  }

  __device__ __forceinline__ void store(const QuerySource &query,
                                        const CausalRun &run, int q0,
                                        uint8_t *shared) {
#pragma unroll
    for (int u = 0; u < kLoads; ++u) {
      const int e = int(threadIdx.x) + u * kThreads;
      const int row = e / kChunks, c = e % kChunks, i = q0 + row;
      if (e >= kAll)
        break;
      if (i < run.count && query.rotation.positions) {
        // Interleaved pairs: (2 p, 2 p + 1) of the rope part is pair p.
        const CausalProjectedQuery &r = query.rotation;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float2 turned = rotateValues(
              ropeAngleOf(r.inverse[4 * c + k], position[u], r.mscale),
              v[u][2 * k], v[u][2 * k + 1]);
          v[u][2 * k] = turned.x, v[u][2 * k + 1] = turned.y;
        }
      }
      storeChunk(queryChunkAt(shared, row, kNope / 8 + c), v[u]);
    }
  }
};

/// Grid blocks x heads x runs (causalBlockOf), kThreads threads: warpgroups
/// 0 and 1 the consumers of queries [q0, q0 + 64) and [q0 + 64, q0 + 128)
/// of the block, warpgroup 2 the producer.
/// Each run's keys ([heads, rows, 192]) and values ([heads, rows, 128]) as
/// TMA maps (a kernel parameter), read in [64 x 64] boxes of one head.
struct CausalTensorMaps {
  CUtensorMap keys[kCausalMaxRuns], values[kCausalMaxRuns];
};

template <bool kBf16Query>
__global__ void __launch_bounds__(kThreads, 1) causalAttentionWarpgroupKernel(
    const __grid_constant__ QuerySource query,
    const __grid_constant__ CausalRunList runs,
    const __grid_constant__ CausalTensorMaps maps, int heads, float scaleLog2,
    float *out, const CausalOutputCodes codes) {
  extern __shared__ uint8_t sharedRaw[];
  uint8_t *shared = sharedRaw + (kSwizzleAtomBytes -
                                 sharedAddress(sharedRaw) % kSwizzleAtomBytes) %
                                    kSwizzleAtomBytes;
  uint64_t *full = reinterpret_cast<uint64_t *>(shared + kBarriersAt);
  uint64_t *empty = full + kStages;
  auto stageAt = [&](int tile) {
    return shared + kStagesAt + (tile % kStages) * kStageBytes;
  };
  awaitPriorKernels();
  const CausalBlock place = causalBlockOf(runs, heads);
  const int h = place.head;
  const CausalRunOperands &operands = *place.operands;
  const CausalRun &run = operands.run;
  const int q0 = place.queryBlock * kCausalWarpgroupQueries;
  if (q0 >= run.count) // (the whole block)
    return;
  // The block's last query and the key tiles it sees.
  const int last = min(run.count, q0 + kCausalWarpgroupQueries) - 1;
  const int tiles = (run.position + last) / kKeys + 1;
  if (threadIdx.x == 0)
    for (int s = 0; s < kStages; ++s) {
      initLoadBarrier(&full[s]);
      initArrivalBarrier(&empty[s], kConsumers * 128);
    }
  __syncthreads();

  const int group = threadIdx.x / 128;
  if (group == kConsumers) {
    // The producer: its first thread asks TMA for the first tiles' keys and
    // values (three and two [64 x 64] boxes of the head; rows past the
    // run's keys read as zeros: finite, never weighted), the warpgroup
    // stages its share of the queries' rope part meanwhile, then the first
    // thread asks for tile j into stage j % kStages once its last readers
    // gave it back.
    const int runIndex = int(place.operands - runs.run);
    const CUtensorMap *keyMap = &maps.keys[runIndex];
    const CUtensorMap *valueMap = &maps.values[runIndex];
    auto issue = [&](int tile) {
      uint8_t *to = stageAt(tile);
      uint64_t *landed = &full[tile % kStages];
      expectBytes(landed, kStageBytes);
#pragma unroll
      for (int b = 0; b < kQkBlocks; ++b)
        loadTile3d(to + b * kBlockBytes, keyMap, 64 * b, tile * kKeys, h,
                   landed);
#pragma unroll
      for (int b = 0; b < kValueBlocks; ++b)
        loadTile3d(to + kKeyBytes + b * kBlockBytes, valueMap, 64 * b,
                   tile * kKeys, h, landed);
    };
    const bool asks = threadIdx.x == kConsumers * 128;
    if (asks)
      for (int tile = 0; tile < min(kStages, tiles); ++tile)
        issue(tile);
    RopeChunks<kBf16Query> rope;
    rope.load(query, run, h, heads, q0);
    rope.store(query, run, q0, shared);
    fenceSharedForWgmma();
    syncNamedBarrier<1, kThreads>(); // the queries staged (both roles)
    if (asks)
      for (int tile = kStages; tile < tiles; ++tile) {
        awaitBarrier(&empty[tile % kStages], (tile / kStages - 1) & 1);
        issue(tile);
      }
    return;
  }

  // A consumer warpgroup: queries [groupFirst, groupFirst + 64).
  const int thread = threadIdx.x % 128, warp = thread / 32, lane = thread % 32;
  const int g = lane / 4, t = lane % 4;
  const int groupFirst = q0 + group * kGroupQueries;
  // Its tiles: those its last query sees (a warpgroup past the run takes
  // the block's, its rows unwritten). It may stop one short of the block:
  // the tile nobody refills after.
  const int groupLast =
      groupFirst < run.count ? min(last, groupFirst + kGroupQueries - 1) : last;
  const int groupTiles = (run.position + groupLast) / kKeys + 1;
  uint8_t *queryTile = shared + group * kGroupQueryBytes;
  RopeChunks<kBf16Query> rope;
  rope.load(query, run, h, heads, q0);
  storeNopeChunks<kBf16Query>(query, run, h, heads, q0, group, shared, thread);
  rope.store(query, run, q0, shared);
  fenceSharedForWgmma();
  syncNamedBarrier<1, kThreads>(); // the queries staged

  const uint64_t queriesAt = kMajorDescriptor(queryTile);
  float s[kKeys / 2];          // the tile's scores (m64n64), then probabilities
  uint32_t p[kKeys / 16][4];   // the last tile's probabilities, BF16: P V's A
  float o[kValue / 8][4] = {}; // the output rows (m64n128)
  float(&oFlat)[kValue / 2] = *reinterpret_cast<float(*)[kValue / 2]>(o);
  float rowMax[2] = {-INFINITY, -INFINITY}, rowSum[2] = {0.f, 0.f};
  const int position[2] = {run.position + groupFirst + 16 * warp + g,
                           run.position + groupFirst + 16 * warp + g + 8};

  auto issueScores = [&](int tile) {
    const uint64_t keys = kMajorDescriptor(stageAt(tile));
    wgmmaFence();
#pragma unroll
    for (int step = 0; step < kQk / 16; ++step) {
      const uint32_t at = (step / 4) * kBlockBytes + (step % 4) * 32;
      wgmma64x64(s, advanced(queriesAt, at), advanced(keys, at), step > 0);
    }
    wgmmaCommit();
  };
  auto issueSum = [&](int tile) {
    const uint64_t values =
        mnMajorDescriptor(stageAt(tile) + kKeyBytes, kBlockBytes);
    wgmmaFence();
#pragma unroll
    for (int k = 0; k < kKeys / 16; ++k)
      wgmma64x128RegisterA(oFlat, p[k],
                           advanced(values, k * 2 * kSwizzleAtomBytes));
    wgmmaCommit();
  };
  // Tile `tile`'s scores into probabilities (masked where the tile reaches
  // past the warpgroup's first query), the rows' new maxima, their sums
  // rescaled and added to; `correction`: what the output's rows are
  // multiplied by.
  auto softmax = [&](int tile, float(&correction)[2]) {
    const int first = tile * kKeys;
    const bool masked = first + kKeys - 1 > run.position + groupFirst;
    float tileMax[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int v = 0; v < kKeys / 2; ++v) {
      const int key = first + 8 * (v / 4) + 2 * t + (v & 1);
      const int half = (v / 2) % 2;
      const float x =
          !masked || key <= position[half] ? s[v] * scaleLog2 : -INFINITY;
      s[v] = x;
      tileMax[half] = fmaxf(tileMax[half], x);
    }
    float reference[2];
#pragma unroll
    for (int half = 0; half < 2; ++half)
      reference[half] = advanceRowMax(tileMax[half], rowMax[half], rowSum[half],
                                      correction[half]);
#pragma unroll
    for (int v = 0; v < kKeys / 2; ++v) {
      const float e = softmaxExp2(s[v] - reference[(v / 2) % 2]);
      s[v] = e;
      rowSum[(v / 2) % 2] += e;
    }
  };
  // The probabilities' fragments of keys [16 k, 16 k + 16): the A fragment
  // of that k16 step.
  auto pack = [&] {
#pragma unroll
    for (int k = 0; k < kKeys / 16; ++k)
#pragma unroll
      for (int r = 0; r < 4; ++r)
        p[k][r] = packBf16(s[8 * k + 2 * r], s[8 * k + 2 * r + 1]);
  };

  awaitBarrier(&full[0], 0);
  issueScores(0);
  wgmmaWait<0>();
  wgmmaFenceOperands(s);
  {
    float unused[2];
    softmax(0, unused);
  }
  pack();
  for (int tile = 1; tile < groupTiles; ++tile) {
    awaitBarrier(&full[tile % kStages], (tile / kStages) & 1);
    issueScores(tile);
    issueSum(tile - 1);
    wgmmaWait<1>(); // the scores (the sum still running)
    wgmmaFenceOperands(s);
    float correction[2];
    softmax(tile, correction);
    wgmmaWait<0>();
    wgmmaFenceOperands(oFlat);
    arriveAt(&empty[(tile - 1) % kStages]);
#pragma unroll
    for (int n = 0; n < kValue / 8; ++n) {
      o[n][0] *= correction[0], o[n][1] *= correction[0];
      o[n][2] *= correction[1], o[n][3] *= correction[1];
    }
    pack();
  }
  issueSum(groupTiles - 1);
  wgmmaWait<0>();
  wgmmaFenceOperands(oFlat);

  const int rows[2] = {groupFirst + 16 * warp + g,
                       groupFirst + 16 * warp + g + 8};
  storeOutputRows(o, rowSum, rows, run, h, heads, t, out, codes);
}

} // namespace

cudaError_t melt::rt::cuda::launchCausalAttentionWarpgroups(
    const QuerySource &query, const CausalRunList &list, int heads,
    float scaleLog2, float *out, const CausalOutputCodes &codes,
    cudaStream_t stream) {
  auto kernel = query.bf16 ? causalAttentionWarpgroupKernel<true>
                           : causalAttentionWarpgroupKernel<false>;
  // Per launch (per current device; a prefill's few launches).
  if (cudaError_t e = cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
          int(kSharedBytes));
      e != cudaSuccess)
    return e;
  // Each run's keys and values as TMA maps: [heads, keys, width] with the
  // run's head pitch (rows past the run's keys read as zeros).
  alignas(64) CausalTensorMaps maps{};
  for (int i = 0; i < list.count; ++i) {
    const CausalRunOperands &r = list.run[i];
    const uint64_t headRows =
        r.headRows > 0 ? uint64_t(r.headRows) : uint64_t(r.run.keys);
    if (!swizzledBf16HeadsMap(maps.keys[i], r.keys, uint64_t(heads),
                              uint64_t(r.run.keys), kQk, kQk, headRows * kQk,
                              kKeys) ||
        !swizzledBf16HeadsMap(maps.values[i], r.values, uint64_t(heads),
                              uint64_t(r.run.keys), kValue, kValue,
                              headRows * kValue, kKeys))
      return cudaErrorNotSupported;
  }
  const unsigned grid = unsigned(list.blocks) * heads * list.count;
  cudaError_t e =
      launchOverlapped(kernel, dim3(grid), kThreads, kSharedBytes, stream,
                       query, list, maps, heads, scaleLog2, out, codes);
  return e != cudaSuccess ? e : cudaGetLastError();
}
