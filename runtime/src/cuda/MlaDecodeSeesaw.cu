//===- MlaDecodeSeesaw.cu - MLA decode, warpgroups taking turns -----------===//
//
// The warpgroup chunk kernel (MlaDecodeWarpgroups.h) with its two
// warpgroups on different tiles, so that one's softmax runs while the
// other's products keep the tensor cores busy. At 128 heads the MLA decode
// is bound by the tensor cores (2 x heads FLOP a cached byte); the kernel it
// replaces scored half of each tile in each warpgroup and met at three
// block barriers a tile, the tensor cores idle through every softmax (37%
// busy, a third of the warps' samples at barriers: Nsight Compute,
// bench/results/mla_seesaw_s32_h200.txt). This one: 491 against 346
// TFLOP/s at 128 heads, batch 64 x 4096 cached tokens on the H200.
//
// A block takes 64 heads of one sequence over one chunk, two tiles of 64
// cached tokens at a time: tile A (even) in buffer 0, tile B (odd) in
// buffer 1, each [64 tokens x 576] BF16 in nine 128-byte-swizzled blocks
// (Wgmma.cuh), loaded by TMA. The 64 x 512 output is split by columns:
// warpgroup 0 sums columns 0..255, warpgroup 1 columns 256..511. Per pair
// of tiles, with m the running row maxima both keep:
//   WG0: scores S_A = Q A^T (m64n64, 36 k16 steps); mA = max(m, rows of
//        S_A); P_A = exp(S_A - mA) in BF16 into A's ninth block (its RoPE
//        dims, read by nothing after the scores); o_L = o_L e^(m - mA) +
//        P_A V_A,L.
//   WG1: scores S_B = Q B^T, issued before waiting for P_A; then o_R =
//        o_R e^(m - mA) + P_A V_A,R behind them; mB = max(mA, rows of S_B),
//        P_B = exp(S_B - mB) into B's ninth block; o_R = o_R e^(mA - mB) +
//        P_B V_B,R.
//   WG0: o_L = o_L e^(mA - mB) + P_B V_B,L.
// The same online softmax as the one-tile-at-a-time kernel, in base 2 (the
// scale times log2 e). Each warpgroup keeps the row sums of the weights it
// made (in the running frame), added at the end; the chunk's partial sums
// and statistics are the other kernel's, for the same combine.
//
// Hand-offs by named barriers (NamedBarrier.cuh), producer arriving,
// consumer syncing: P_A ready (with mA and e^(m - mA)), P_B ready (mB and
// e^(mA - mB)), buffer 0 given back by WG1's P_A V_A,R (WG0 then loads the
// rest of the next A: its own value blocks it loads again once its own
// P_A V_A,L is done), buffer 1 given back by WG0's P_B V_B,L (likewise
// WG1, the next B).
// Each producer's next arrival needs the consumer's previous sync, so a
// barrier never holds two rounds.
//
// Also, each measured on the H200 (bench/results/mla_seesaw_s32_h200.txt):
// a tile comes in two parts (below); the pair ahead is prefetched into L2;
// WG1 issues B's scores once WG0 has issued A's, so that A's finish first
// and B's run through A's softmax; a warpgroup's products over its own tile
// take the weights from registers; the softmax scale goes into the
// weights' exponent (the softmax is the chain both warpgroups wait on).
//
//===----------------------------------------------------------------------===//
#include "cuda/MlaDecodeSeesaw.h"

#include "EnvSwitch.h"

#include "cuda/BulkTensorCopy.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/MlaWarpgroupRows.cuh"
#include "cuda/NamedBarrier.cuh"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/Wgmma.cuh"

#include <cfloat>

namespace melt::rt::cuda {
namespace {

constexpr int kThreads = 256; // two warpgroups
constexpr int kGroupThreads = 128;
constexpr int kTileTokens = 64;
constexpr int kHeads = 64;
constexpr int kDimBlocks = kLatentEntry / 64;        // 9 blocks of 64 dims
constexpr int kBlockBytes = 64 * kSwizzleRowBytes;   // [64 rows x 64 dims]
constexpr int kTileBytes = kDimBlocks * kBlockBytes; // 72 KB
constexpr int kEntryChunks = kLatentEntry * 2 / 16;  // 16-byte chunks a row
constexpr int kValueChunks = kLatentRank * 2 / 16;
constexpr int kGroupColumns = kLatentRank / 2; // per warpgroup
constexpr int kGroupValueBlocks = kGroupColumns / 64;
constexpr int kValueBlocksTotal = kLatentRank / 64;
/// The block of a tile that takes its softmax weights once scored.
constexpr int kWeightsBlock = kDimBlocks - 1;

/// A tile comes in two parts: the four value blocks of its owner's columns
/// (WG0 owns A, columns 0..255; WG1 owns B, 256..511), which only the owner
/// reads, loaded again as soon as the owner's own products are done; then
/// the other five (the other's columns and the RoPE / weights block),
/// once the other warpgroup has given the buffer back. The owner scores the
/// first part while the second comes.
constexpr int kOwnBlocks = kGroupValueBlocks;
constexpr int kOwnBytes = kOwnBlocks * kBlockBytes;
__device__ __forceinline__ bool ownedBy(int block, int owner) {
  return block < kValueBlocksTotal && block / kGroupValueBlocks == owner;
}

// Barrier numbers (0 is __syncthreads').
constexpr int kWeightsAReady = 1, kWeightsBReady = 2, kBufferAFree = 3,
              kBufferBFree = 4, kScoresAIssued = 7,
              kGroupBarrier = 5; // + group

/// Shared memory from a 1024-byte aligned base: the queries, the two tile
/// buffers, per row the maxima and rescales the two warpgroups hand each
/// other ([0]: after A, [1]: after B) and WG1's row sums at the end, then
/// the buffers' load barriers (per buffer: its owner's half, the rest).
constexpr size_t kQueriesAt = 0, kTilesAt = kTileBytes,
                 kRowMaxAt = 3 * size_t(kTileBytes),
                 kRowRescaleAt = kRowMaxAt + 2 * kHeads * sizeof(float),
                 kRowSumAt = kRowRescaleAt + 2 * kHeads * sizeof(float),
                 kBarriersAt = kRowSumAt + kHeads * sizeof(float),
                 kSharedBytes = kBarriersAt + 4 * sizeof(uint64_t) +
                                kSwizzleAtomBytes; // room to align

__device__ __forceinline__ void syncGroup(int group) {
  if (group == 0)
    syncNamedBarrier<kGroupBarrier, kGroupThreads>();
  else
    syncNamedBarrier<kGroupBarrier + 1, kGroupThreads>();
}

/// kRegisterWeights: each warpgroup's products over its own tile take its
/// weights from registers (wgmma's A), not from the weights block it wrote
/// for the other (no warpgroup barrier before them).
/// kScaleInExp: the softmax scale applied in the weights' exponent (one
/// FMA), the scores masked to -infinity, not scaled one by one.
template <bool kRegisterWeights, bool kScaleInExp>
__global__ void __launch_bounds__(kThreads, 1)
    mlaDecodeSeesawChunks(MlaDecodeArgs args, int chunkTokens, int chunks,
                          float *partialSums, float2 *partialStats,
                          int prefetchPairs, bool scoresInTurn,
                          const __grid_constant__ CUtensorMap cacheMap) {
  awaitPriorKernels();
  extern __shared__ uint8_t sharedRaw[];
  uint8_t *shared = sharedRaw + (kSwizzleAtomBytes -
                                 sharedAddress(sharedRaw) % kSwizzleAtomBytes) %
                                    kSwizzleAtomBytes;
  uint8_t *queries = shared + kQueriesAt;
  float *rowMax = reinterpret_cast<float *>(shared + kRowMaxAt);
  float *rowRescale = reinterpret_cast<float *>(shared + kRowRescaleAt);
  float *rowSum = reinterpret_cast<float *>(shared + kRowSumAt);
  uint64_t *tileLoaded = reinterpret_cast<uint64_t *>(shared + kBarriersAt);

  const int headGroup = blockIdx.x, chunk = blockIdx.y, seq = blockIdx.z;
  const int group = threadIdx.x / kGroupThreads;
  const int warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int length = args.lengths[seq];
  const int begin = chunk * chunkTokens;
  const int end = min(length, begin + chunkTokens);
  const int head0 = headGroup * kHeads;
  const int tiles = max(0, (end - begin + kTileTokens - 1) / kTileTokens);
  const int pairs = (tiles + 1) / 2;
  const int32_t *pages =
      args.blockTable + size_t(seq) * args.maxPagesPerSequence;
  auto bufferOf = [&](int which) {
    return shared + kTilesAt + which * kTileBytes;
  };
  // Part `part` (0: its owner's value blocks, 1: the rest) of tile `index`
  // of the chunk into buffer index % 2, by one thread.
  auto startTile = [&](int index, int part) {
    const int t0 = begin + index * kTileTokens;
    const int row =
        pages[t0 / args.pageSize] * args.pageSize + t0 % args.pageSize;
    uint64_t *barrier = &tileLoaded[2 * (index % 2) + part];
    expectBytes(barrier, part == 0 ? kOwnBytes : kTileBytes - kOwnBytes);
    for (int block = 0; block < kDimBlocks; ++block)
      if (ownedBy(block, index % 2) == (part == 0))
        loadTile2d(bufferOf(index % 2) + block * kBlockBytes, &cacheMap,
                   block * 64, row, barrier);
  };
  // Where tile `index` (of pair `pair`) is partial: waits for all of it;
  // rows past the chunk's end (other tokens of its page, or nothing written
  // yet) become zeros in its value blocks, by this warpgroup, so that they
  // add nothing to the sums (their scores are masked; their RoPE dims are
  // overwritten); returns true (the warpgroup then syncs before its
  // products read them). A whole tile is waited for part by part as it is
  // scored (issueScores).
  auto awaitPartialTile = [&](int index, int pair) {
    const int rows = end - (begin + index * kTileTokens);
    if (rows >= kTileTokens) // block-uniform
      return false;
    awaitBarrier(&tileLoaded[2 * (index % 2)], pair % 2);
    awaitBarrier(&tileLoaded[2 * (index % 2) + 1], pair % 2);
    uint8_t *tile = bufferOf(index % 2);
    for (int i = threadIdx.x % kGroupThreads;
         i < (kTileTokens - rows) * kValueChunks; i += kGroupThreads) {
      const int row = rows + i / kValueChunks, c = i % kValueChunks;
      *reinterpret_cast<uint4 *>(tile + (c / 8) * kBlockBytes +
                                 swizzledOffset(row, c % 8)) =
          make_uint4(0, 0, 0, 0);
    }
    fenceSharedForWgmma();
    return true;
  };

  if (threadIdx.x == 0) {
    for (int i = 0; i < 4; ++i)
      initLoadBarrier(&tileLoaded[i]);
  }
  // The queries by every thread's cp.async.
  for (int i = threadIdx.x; i < kHeads * kEntryChunks; i += kThreads) {
    const int row = i / kEntryChunks, c = i % kEntryChunks;
    copyAsync16(queries + (c / 8) * kBlockBytes + swizzledOffset(row, c % 8),
                args.queries +
                    (size_t(seq) * args.heads + head0 + row) * kLatentEntry +
                    c * 8);
  }
  commitCopies();
  __syncthreads(); // the barriers initialized
  if (threadIdx.x % kGroupThreads == 0 && group < tiles) {
    startTile(group, 0);
    startTile(group, 1);
  }
  awaitCopies<0>();
  fenceSharedForWgmma();
  __syncthreads(); // the queries shown to the tensor cores

  // This thread's rows (heads) in every fragment: r[0] = 16 warp + g and
  // r[1] = r[0] + 8; the tokens each sees (a prefill's causal rows).
  const int rows[2] = {16 * warp + g, 16 * warp + g + 8};
  int rowEnd[2];
  mlaRowEnds(args, seq, head0, end, rows, rowEnd);
  const float scale = args.scale * 1.4426950408889634f; // log2 e

  const uint64_t queriesAt = kMajorDescriptor(queries);
  // Per buffer: its tokens as keys, this warpgroup's 256 columns of its
  // values, its weights block.
  auto keysOf = [&](int which) { return kMajorDescriptor(bufferOf(which)); };
  auto valuesOf = [&](int which) {
    return mnMajorDescriptor(
        bufferOf(which) + group * kGroupValueBlocks * kBlockBytes, kBlockBytes);
  };
  auto weightsOf = [&](int which) {
    return kMajorDescriptor(bufferOf(which) + kWeightsBlock * kBlockBytes);
  };

  float score[32];
  // S = Q K^T of tile `index` (of pair `pair`; in buffer index % 2, this
  // warpgroup's): [64 x 576] x [576 x 64], its owner's value dims first,
  // each part's steps issued once the part has landed.
  auto issueScores = [&](int index, int pair) {
    const int which = index % 2;
    const uint64_t keys = keysOf(which);
    bool first = true;
#pragma unroll
    for (int part = 0; part < 2; ++part) {
      awaitBarrier(&tileLoaded[2 * which + part], pair % 2);
      wgmmaFence(); // after the wait (else ptxas adds one on its branch)
#pragma unroll
      for (int block = 0; block < kDimBlocks; ++block) {
        if (ownedBy(block, which) != (part == 0))
          continue;
#pragma unroll
        for (int step = 0; step < 4; ++step) {
          const uint32_t offset = block * kBlockBytes + step * 32;
          wgmma64x64(score, advanced(queriesAt, offset), advanced(keys, offset),
                     !first);
          first = false;
        }
      }
    }
    wgmmaCommit();
  };
  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i)
    acc[i] = 0.f;
  // o += P V over the tile in buffer `which` (its weights block as P).
  auto issueWeightedSum = [&](int which) {
    const uint64_t weights = weightsOf(which), values = valuesOf(which);
    wgmmaFence();
#pragma unroll
    for (int step = 0; step < kTileTokens / 16; ++step)
      wgmma64x256Transposed(acc, advanced(weights, step * 32),
                            advanced(values, step * 2 * kSwizzleAtomBytes));
    wgmmaCommit();
  };
  // o += P V over this warpgroup's own tile (in buffer `which`), P from
  // `packed` where kRegisterWeights, else from the tile's weights block.
  auto issueOwnWeightedSum = [&](int which, const uint32_t(&packed)[16]) {
    if constexpr (kRegisterWeights) {
      const uint64_t values = valuesOf(which);
      wgmmaFence();
#pragma unroll
      for (int step = 0; step < kTileTokens / 16; ++step) {
        const uint32_t a[4] = {packed[4 * step], packed[4 * step + 1],
                               packed[4 * step + 2], packed[4 * step + 3]};
        wgmma64x256RegisterA(acc, a,
                             advanced(values, step * 2 * kSwizzleAtomBytes));
      }
      wgmmaCommit();
    } else {
      issueWeightedSum(which);
    }
  };
  auto rescale = [&](const float(&factor)[2]) {
    // Skipped where no row of the warp's maximum moved.
    if (__any_sync(0xffffffff, factor[0] != 1.f || factor[1] != 1.f)) {
#pragma unroll
      for (int v = 0; v < 128; ++v)
        acc[v] *= factor[(v / 2) % 2];
    }
  };
  // The softmax of the scores of tile `index` against running maxima
  // `from`: the new maxima into `to`, BF16 weights into the tile's weights
  // block, their sum (as rounded) into `sum`; returns in `factor` the
  // rescale e^(from - to).
  auto softmax = [&](int index, const float(&from)[2], float(&to)[2],
                     float(&factor)[2], float(&sum)[2], uint32_t(&packed)[16]) {
    const int t0 = begin + index * kTileTokens;
    float tileMax[2];
    scaleMlaScores<64, kScaleInExp>(
        score, t0, t0 + kTileTokens <= min(rowEnd[0], rowEnd[1]), rowEnd, scale,
        t, tileMax);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      to[r] = fmaxf(from[r], tileMax[r]);
      factor[r] = exp2f(from[r] - to[r]); // 1 while both are -FLT_MAX
      sum[r] = 0.f;
    }
    storeMlaWeights<64, kScaleInExp>(
        score, to, bufferOf(index % 2) + kWeightsBlock * kBlockBytes, 0, rows,
        t, sum, kRegisterWeights ? packed : nullptr, scale);
    fenceSharedForWgmma();
  };

  float runningMax[2] = {-FLT_MAX, -FLT_MAX};
  float runningSum[2] = {0.f, 0.f}; // this warpgroup's weights only
  // Every branch of the loop ends with no wgmma in flight: a merge of paths
  // with one pending makes ptxas serialize every wgmma of the kernel
  // (C7515), the register copies at the join counted as writes to their
  // accumulators.
  for (int pair = 0; pair < pairs; ++pair) {
    const int a = 2 * pair, b = a + 1;
    const bool hasB = b < tiles, nextA = a + 2 < tiles, nextB = b + 2 < tiles;
    // The pair `prefetchPairs` ahead brought into L2 now: its loads, issued
    // once buffers are given back late in a pair, then wait on L2, not on
    // memory. (A tile is 64 rows of one page, contiguous.)
    if (prefetchPairs > 0 && threadIdx.x % kGroupThreads == 0) {
      const int ahead = a + 2 * prefetchPairs + group;
      if (ahead < tiles) {
        const int t0 = begin + ahead * kTileTokens;
        prefetchToL2(args.cache +
                         (size_t(pages[t0 / args.pageSize]) * args.pageSize +
                          t0 % args.pageSize) *
                             kLatentEntry,
                     uint32_t(kTileBytes));
      }
    }
    if (group == 0) {
      if (awaitPartialTile(a, pair))
        syncGroup(0); // the zeroed rows written by the whole warpgroup
      issueScores(a, pair);
      if (scoresInTurn && hasB)
        arriveAtNamedBarrier<kScoresAIssued, kThreads>();
      wgmmaWait<0>();
      wgmmaFenceOperands(score);
      float maxA[2], factorA[2], sumA[2];
      uint32_t packedA[16];
      softmax(a, runningMax, maxA, factorA, sumA, packedA);
      if (t == 0)
        for (int r = 0; r < 2; ++r) {
          rowMax[rows[r]] = maxA[r];
          rowRescale[rows[r]] = factorA[r];
        }
      arriveAtNamedBarrier<kWeightsAReady, kThreads>();
      if (!kRegisterWeights)
        syncGroup(0); // P_A whole before this warpgroup's products read it
      rescale(factorA);
      for (int r = 0; r < 2; ++r) {
        runningSum[r] = runningSum[r] * factorA[r] + sumA[r];
        runningMax[r] = maxA[r];
      }
      issueOwnWeightedSum(0, packedA);
      if (hasB) {
        syncNamedBarrier<kWeightsBReady, kThreads>();
        float factorB[2];
        for (int r = 0; r < 2; ++r) {
          factorB[r] = rowRescale[kHeads + rows[r]];
          runningMax[r] = rowMax[kHeads + rows[r]];
          runningSum[r] *= factorB[r];
        }
        wgmmaWait<0>(); // P_A V_A,L: A's columns 0..255 read
        wgmmaFenceOperands(acc);
        if (nextA && threadIdx.x == 0)
          startTile(a + 2, 0);
        rescale(factorB);
        issueWeightedSum(1);
        if (nextA) {
          syncNamedBarrier<kBufferAFree, kThreads>(); // WG1's P_A V_A,R done
          if (threadIdx.x == 0)
            startTile(a + 2, 1);
        }
        wgmmaWait<0>(); // P_B V_B,L
        wgmmaFenceOperands(acc);
        if (nextB)
          arriveAtNamedBarrier<kBufferBFree, kThreads>();
      } else { // the last pair
        wgmmaWait<0>();
        wgmmaFenceOperands(acc);
      }
    } else if (hasB) {
      if (awaitPartialTile(b, pair))
        syncGroup(1);
      // Behind A's scores on the tensor cores (their products queue in
      // issue order): A's finish first, and B's run through A's softmax.
      if (scoresInTurn)
        syncNamedBarrier<kScoresAIssued, kThreads>();
      issueScores(b, pair);
      syncNamedBarrier<kWeightsAReady, kThreads>();
      float maxA[2], factorA[2];
      for (int r = 0; r < 2; ++r) {
        maxA[r] = rowMax[rows[r]];
        factorA[r] = rowRescale[rows[r]];
        runningSum[r] *= factorA[r];
        runningMax[r] = maxA[r];
      }
      wgmmaWait<0>(); // S_B, mostly done behind P_A's wait
      wgmmaFenceOperands(score);
      rescale(factorA);
      issueWeightedSum(0);
      float maxB[2], factorB[2], sumB[2];
      uint32_t packedB[16];
      softmax(b, maxA, maxB, factorB, sumB, packedB);
      if (t == 0)
        for (int r = 0; r < 2; ++r) {
          rowMax[kHeads + rows[r]] = maxB[r];
          rowRescale[kHeads + rows[r]] = factorB[r];
        }
      arriveAtNamedBarrier<kWeightsBReady, kThreads>();
      if (!kRegisterWeights)
        syncGroup(1); // P_B whole
      wgmmaWait<0>(); // P_A V_A,R
      wgmmaFenceOperands(acc);
      if (nextA)
        arriveAtNamedBarrier<kBufferAFree, kThreads>();
      rescale(factorB);
      for (int r = 0; r < 2; ++r) {
        runningSum[r] = runningSum[r] * factorB[r] + sumB[r];
        runningMax[r] = maxB[r];
      }
      issueOwnWeightedSum(1, packedB);
      wgmmaWait<0>(); // P_B V_B,R: B's columns 256..511 read
      wgmmaFenceOperands(acc);
      if (nextB) {
        if (threadIdx.x == kGroupThreads)
          startTile(b + 2, 0);
        syncNamedBarrier<kBufferBFree, kThreads>(); // WG0's P_B V_B,L
        if (threadIdx.x == kGroupThreads)
          startTile(b + 2, 1);
      }
    } else { // the last pair, A alone
      syncNamedBarrier<kWeightsAReady, kThreads>();
      float factorA[2];
      for (int r = 0; r < 2; ++r) {
        factorA[r] = rowRescale[rows[r]];
        runningSum[r] *= factorA[r];
        runningMax[r] = rowMax[rows[r]];
      }
      rescale(factorA);
      issueWeightedSum(0);
      wgmmaWait<0>();
      wgmmaFenceOperands(acc);
    }
  }
  wgmmaWait<0>();
  wgmmaFenceOperands(acc);

  // This chunk's unnormalized sums, and its statistics: the row sums of
  // both warpgroups' weights added.
  const size_t slot = (size_t(seq) * chunks + chunk) * args.heads + head0;
  float *out = partialSums + slot * kLatentRank + group * kGroupColumns;
  storeMlaSums(acc, out, rows, t);
  storeMlaStatistics(runningMax, runningSum, rowSum, partialStats + slot, rows,
                     group, t);
}

} // namespace

bool mlaDecodeSeesaw() {
  static const bool enabled = melt::rt::envSwitch("MELT_CUDA_MLA_SEESAW", true);
  return enabled;
}

namespace {

template <bool kRegisterWeights, bool kScaleInExp>
cudaError_t launchSeesaw(const MlaDecodeArgs &args, int chunkTokens, int chunks,
                         float *sums, float2 *stats, const CUtensorMap &map,
                         cudaStream_t stream) {
  cudaError_t error = cudaFuncSetAttribute(
      mlaDecodeSeesawChunks<kRegisterWeights, kScaleInExp>,
      cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSharedBytes));
  if (error != cudaSuccess)
    return error;
  // The head groups of a chunk next to each other: they read the same
  // tiles, the second mostly from L2.
  const dim3 grid(args.heads / kHeads, chunks, args.batch);
  // Pairs ahead whose tiles each block brings into L2
  // (MELT_CUDA_MLA_PREFETCH_PAIRS, 0: none).
  static const int prefetchPairs =
      int(melt::rt::envInt("MELT_CUDA_MLA_PREFETCH_PAIRS", 1, 0, 8));
  // WG1 issues B's scores once WG0 has issued A's
  // (MELT_CUDA_MLA_SCORES_IN_TURN=0: at once).
  static const bool scoresInTurn =
      melt::rt::envSwitch("MELT_CUDA_MLA_SCORES_IN_TURN", true);
  error =
      launchOverlapped(mlaDecodeSeesawChunks<kRegisterWeights, kScaleInExp>,
                       grid, kThreads, kSharedBytes, stream, args, chunkTokens,
                       chunks, sums, stats, prefetchPairs, scoresInTurn, map);
  return error != cudaSuccess ? error : cudaGetLastError();
}

} // namespace

cudaError_t launchMlaSeesawChunks(const MlaDecodeArgs &args, int chunkTokens,
                                  int chunks, float *sums, float2 *stats,
                                  const CUtensorMap &map, cudaStream_t stream) {
  if (chunkTokens % kTileTokens != 0 || args.heads % kHeads != 0 ||
      args.pageSize % kTileTokens != 0)
    return cudaErrorInvalidValue;
  // Each warpgroup's products over its own tile with the weights from
  // registers (MELT_CUDA_MLA_REGISTER_WEIGHTS=0: from shared memory).
  static const bool registerWeights =
      melt::rt::envSwitch("MELT_CUDA_MLA_REGISTER_WEIGHTS", true);
  // The softmax scale in the weights' exponent
  // (MELT_CUDA_MLA_SCALE_IN_EXP=0: each score scaled first).
  static const bool scaleInExp =
      melt::rt::envSwitch("MELT_CUDA_MLA_SCALE_IN_EXP", true);
  if (registerWeights)
    return scaleInExp ? launchSeesaw<true, true>(args, chunkTokens, chunks,
                                                 sums, stats, map, stream)
                      : launchSeesaw<true, false>(args, chunkTokens, chunks,
                                                  sums, stats, map, stream);
  return scaleInExp ? launchSeesaw<false, true>(args, chunkTokens, chunks, sums,
                                                stats, map, stream)
                    : launchSeesaw<false, false>(args, chunkTokens, chunks,
                                                 sums, stats, map, stream);
}

} // namespace melt::rt::cuda
