//===- GroupedGemmFp8.cu - grouped gate/up on FP8 tensor cores ------------===//
//
// A block: a [128 x 128] tile of y, two consumer warpgroups of 64 rows each
// and a producer warpgroup. A stage holds one 128-wide block of k (one
// block of scales): x's, gate's and up's [128 x 128] e4m3 tiles in the
// 128-byte swizzle, brought by TMA through a ring of four stages. Each
// consumer warpgroup multiplies x by gate (wgmma m64n128k32, four steps) into a
// scratch accumulator, waits for it, and adds it times its rows' x scales
// and the tile's gate scale into the gate sums; then the same for up. The
// other warpgroup's products run while one adds. The single product (the
// down projection) is the same loop over one weight, six stages; or, where
// its n takes them (GroupedFp8Options::wideColumns), 256 columns a block as
// two tiles of the one weight through the pair's four stages: a stage's
// 48 KB then feed twice the products of the 32 KB of a 128-column one (at
// mini's 8192 tokens the down product ran at ~550 TFLOP/s to the pair's
// ~750, its blocks' 11 of k a short loop behind their first loads).
//
// The loads: a third warpgroup's first thread asks as far ahead as the
// ring goes, each consumer warp giving a stage back on its `empty` barrier
// as its products are done reading it: the two consumers drift apart, one's
// adds under the other's products. The producer gives its registers to the
// consumers (setmaxnreg: 40 and 232 a thread). A ninth warp alone would not
// do: a quarter of the SM's registers serve its warps on one scheduler, so
// three warps there cap a thread at 168 registers, and the pair's 216
// spill. (Session 25, bench/results/grouped_fp8_producer_wide_s25_h200.txt:
// against thread 0 of the consumers asking between blocks of k, both
// warpgroups synced each one, mini's 8192 tokens' down product 426 against
// 439 us at 256 columns, 485 against 510 at 128; the pair with FP8 output
// 826 against 858.)
//
// Tried and removed (session 26): the pair gathering its tokens' rows as
// it loads them, not gatherFp8Rows first (each of the producer warpgroup's
// 128 threads a row, cp.async into TMA's swizzled places, 129 arrivals a
// stage): the same bits, and mini's grouped experts in the 8x1024 prefill
// 9.73 ms against 7.17 (9.77 against 3.63 at 1x1024). And a shared
// expert's gate and up on the pair as one group of every token (its SiLU-
// mul written quantized): 128 us a layer against cuBLASLt's two products
// (45 us each) and a quantize (37), no faster
// (bench/results/prefill_switches_trace_s26_h200.txt).
//
// GroupedFp8Options::persistent: a block an SM, each going over tiles b,
// b + grid, ..., the producer's ring running on across a tile's end, so
// the next tile's first blocks of k load while one is stored (its FP8
// rows staged apart from the ring).
//
// Given where each group's rows end (KernelArgs::ends), a group's padding
// rows are not stored, and a consumer warpgroup whose 64 rows of a tile are
// all padding skips its products (mini-fp8's 8x1024 prefill: no measurable
// change; bench/results/session46_h200.txt).
//
// BF16 rows leave 16 bytes a lane (FragmentStores.cuh), whole sectors a
// store (GroupedFp8Options::wideStores): mini's pair 741 against 839 us,
// its persistent down with BF16 rows 351 against 461
// (bench/results/session49_h200/call1-log.txt).
//
// A tile's 128 columns are one 1 x 128 block of each of its rows: the pair
// can quantize its own output (each row's largest magnitude from the four
// threads that hold its columns), as quantizeRowsFp8 would its BF16 rows.
//
//===----------------------------------------------------------------------===//
#include "cuda/GroupedGemmFp8.h"

#include "cuda/BlockQuantize.cuh"
#include "cuda/BulkTensorCopy.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/FragmentStores.cuh"
#include "cuda/GroupOfRow.cuh"
#include "cuda/Silu.cuh"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/TensorMaps.h"
#include "cuda/Wgmma.cuh"

#include <algorithm>

namespace melt::rt::cuda {
namespace {

constexpr int kTile = 128, kThreads = 256;
constexpr int kOperandBytes = kTile * kTile; // a [128 x 128] e4m3 tile

/// What a launch computes: the gate/up pair into BF16 rows or into FP8
/// codes and their 1 x 128 scales, or one product into F32 or BF16 rows
/// (128 columns a block, or 256 as two tiles of its weight: SingleWide).
enum class Mode { PairBf16, PairFp8, Single, SingleWide };

/// The weight tiles a stage holds (a weight's, or two column tiles of one
/// weight), the ring's stages, its bytes (then the pair's 16-KB staging
/// tile for its FP8 rows, the `full` barriers, the `empty` ones), the
/// columns of a block.
template <Mode kMode> struct Layout {
  static constexpr int kWeights = kMode == Mode::Single ? 1 : 2;
  static constexpr int kStages = kMode == Mode::Single ? 6 : 4;
  static constexpr int kStageBytes = (1 + kWeights) * kOperandBytes;
  static constexpr size_t kStagingAt = size_t(kStages) * kStageBytes;
  static constexpr size_t kBarriersAt =
      kStagingAt + (kMode == Mode::PairFp8 ? kOperandBytes : 0);
  static constexpr size_t kSharedBytes =
      kBarriersAt + 2 * kStages * sizeof(uint64_t) + kSwizzleAtomBytes;
  static constexpr int kColumns = kMode == Mode::SingleWide ? 2 * kTile : kTile;
};

/// The threads of a block: its two consumer warpgroups (kThreads), then
/// the producer warpgroup.
constexpr int kBlockThreads = kThreads + 128;

/// The registers a thread of the producer warpgroup keeps and a consumer's
/// take (128 x 40 + 256 x 232 of the SM's 65,536).
constexpr int kProducerRegisters = 40, kConsumerRegisters = 232;

/// Waits for the consumer warpgroups' 256 threads alone (the producer
/// has left).
__device__ __forceinline__ void syncConsumers() {
  asm volatile("bar.sync 1, %0;\n" ::"n"(kThreads) : "memory");
}

/// Every mode's operands: x ([capacity, k] codes, [k / 128, capacity]
/// scales), one or two weights ([groups, n, k] codes, [groups, n / 128,
/// k / 128] scales; SingleWide's second: the first's next column block's),
/// and the output the mode writes.
struct KernelArgs {
  const uint8_t *x = nullptr;
  const float *xScales = nullptr;
  const float *wScales[2] = {nullptr, nullptr};
  __nv_bfloat16 *y = nullptr;
  float *yF32 = nullptr;
  uint8_t *yCodes = nullptr;
  float *yScales = nullptr;
  const int32_t *starts = nullptr;
  const int32_t *ends = nullptr; // where given, each group's rows' end
  int groups = 0, capacity = 0, n = 0, k = 0;
  bool wideStores = true; // GroupedFp8Options::wideStores
};

/// sum += part times the scale of its row: rows g (d[4j], d[4j + 1]) take
/// `lo`, rows g + 8 (d[4j + 2], d[4j + 3]) `hi` (Wgmma.cuh's fragments).
__device__ __forceinline__ void
addScaled(float (&sum)[64], const float (&part)[64], float lo, float hi) {
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    sum[4 * j] += part[4 * j] * lo;
    sum[4 * j + 1] += part[4 * j + 1] * lo;
    sum[4 * j + 2] += part[4 * j + 2] * hi;
    sum[4 * j + 3] += part[4 * j + 3] * hi;
  }
}

/// One block of k of a tile, from the stage at `stage` (x's tile, then
/// each weight's): this warpgroup's 64 rows of x times each weight's tile
/// (wgmma m64n128k32, four steps) into `part`, then added into its sums
/// times the rows' x scales and the weight block's scale (a.wScales[w]
/// [scaleIndex]).
template <Mode kMode>
__device__ __forceinline__ void
multiplyBlock(const KernelArgs &a, float (&sums)[Layout<kMode>::kWeights][64],
              float (&part)[64], const uint8_t *stage, int group,
              size_t scaleIndex, float xLo, float xHi) {
  const uint64_t x = kMajorDescriptor(stage + group * 64 * kSwizzleRowBytes);
#pragma unroll
  for (int which = 0; which < Layout<kMode>::kWeights; ++which) {
    const float wScale = a.wScales[which][scaleIndex];
    const uint64_t w = kMajorDescriptor(stage + (1 + which) * kOperandBytes);
    wgmmaFence(); // part was read by the last addScaled
#pragma unroll
    for (int step = 0; step < kTile / 32; ++step)
      wgmma64x128Fp8(part, advanced(x, step * 32), advanced(w, step * 32),
                     step > 0);
    wgmmaCommit();
    wgmmaWait<0>();
    addScaled(sums[which], part, xLo * wScale, xHi * wScale);
  }
}

/// A tile's sums into the mode's output: rows rowLo and rowLo + 8 of the
/// [128 x kColumns] tile at (row0, n0), this thread's columns 8 j + 2 t,
/// + 1 (of each 128). The FP8 rows go through `staging` (16 KB of shared
/// memory apart from the ring), the consumers' threads taking part.
template <Mode kMode>
__device__ __forceinline__ void
storeTile(const KernelArgs &a, const float (&sums)[Layout<kMode>::kWeights][64],
          int row0, int n0, int rowLo, int t, int rowsUsed, uint8_t *staging) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = rowLo + 8 * half;
    const size_t at = size_t(row) * a.n + n0 + 2 * t;
    // A padding row (no one reads it) is not stored; the FP8 rows' quads
    // still take part in their warp's shuffles, their rows staged unread.
    const bool padding = row - row0 >= rowsUsed;
    if constexpr (kMode == Mode::Single || kMode == Mode::SingleWide) {
      if (padding)
        continue;
#pragma unroll
      for (int which = 0; which < Layout<kMode>::kWeights; ++which) {
        if (a.yF32) {
#pragma unroll
          for (int j = 0; j < 16; ++j) {
            const int i = 4 * j + 2 * half;
            *reinterpret_cast<float2 *>(a.yF32 + at + which * kTile + 8 * j) =
                make_float2(sums[which][i], sums[which][i + 1]);
          }
          continue;
        }
        uint32_t pairs[16];
#pragma unroll
        for (int j = 0; j < 16; ++j)
          pairs[j] = packBf16(sums[which][4 * j + 2 * half],
                              sums[which][4 * j + 2 * half + 1]);
        storeFragmentRow(a.y + size_t(row) * a.n + n0 + which * kTile, pairs,
                         threadIdx.x % 32, a.wideStores);
      }
    } else if constexpr (kMode == Mode::PairBf16) {
      if (padding)
        continue;
      // SiLU(gate) * up, each rounded to BF16 first (GroupedGemm.h's pair).
      uint32_t pairs[16];
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int i = 4 * j + 2 * half;
        pairs[j] = packBf16(siluTimesOfBf16(sums[0][i], sums[1][i]),
                            siluTimesOfBf16(sums[0][i + 1], sums[1][i + 1]));
      }
      storeFragmentRow(a.y + size_t(row) * a.n + n0, pairs, threadIdx.x % 32,
                       a.wideStores);
    } else {
      // The same BF16 values, then the row's block quantized: its largest
      // magnitude over the quad's 128 columns. (Both warpgroups done with
      // the staging tile's last rows first.)
      if (half == 0)
        syncConsumers();
      float v[32], amax = 0.f;
#pragma unroll
      for (int j = 0; j < 16; ++j)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int i = 4 * j + 2 * half + c;
          v[2 * j + c] = __bfloat162float(
              __float2bfloat16(siluTimesOfBf16(sums[0][i], sums[1][i])));
          amax = fmaxf(amax, fabsf(v[2 * j + c]));
        }
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
      const float scale = gemmInputScale(amax), inverse = 1.f / scale;
      // Into the staging tile in shared memory, 16-byte chunks swizzled by
      // row so that a warp's 8 rows fall on other banks; stored whole
      // below.
      const int local = row - row0;
#pragma unroll
      for (int j = 0; j < 16; ++j)
        *reinterpret_cast<uint16_t *>(staging + local * kTile +
                                      ((j / 2) ^ (local % 8)) * 16 +
                                      8 * (j % 2) + 2 * t) =
            uint16_t(gemmInputCodes(v[2 * j], v[2 * j + 1], 0.f, 0.f, inverse));
      if (t == 0 && !padding)
        a.yScales[size_t(n0 / kTile) * a.capacity + row] = scale;
    }
  }
  if constexpr (kMode == Mode::PairFp8) {
    // The tile's rows, 128 bytes each, in 16-byte stores.
    syncConsumers();
    for (int c = threadIdx.x; c < rowsUsed * (kTile / 16); c += kThreads) {
      const int local = c / 8, chunk = c % 8;
      *reinterpret_cast<uint4 *>(a.yCodes + size_t(row0 + local) * a.n + n0 +
                                 chunk * 16) =
          *reinterpret_cast<const uint4 *>(staging + local * kTile +
                                           (chunk ^ (local % 8)) * 16);
    }
  }
}

/// A tile of the launch: its first row, its rows' group and its first
/// column; `none` past the last group's rows (no tile after it has any).
struct TileAt {
  int row0 = 0, expert = 0, n0 = 0;
  int rowsUsed = kTile; // its rows before its group's padding
  bool none = false;
};

template <Mode kMode>
__device__ __forceinline__ TileAt tileAt(const KernelArgs &a, int tile,
                                         int columnTiles, int rowsEnd) {
  TileAt at;
  at.row0 = tile / columnTiles * kTile;
  at.none = at.row0 >= rowsEnd;
  if (!at.none) {
    at.expert = groupOfRow(a.starts, a.groups, at.row0);
    at.n0 = tile % columnTiles * Layout<kMode>::kColumns;
    if (a.ends)
      at.rowsUsed = min(kTile, a.ends[at.expert] - at.row0);
  }
  return at;
}

/// Tiles blockIdx.x, + gridDim.x, ... in row-tile order (a launch of a
/// block a tile takes one; a persistent one its share, the ring running on
/// across a tile's end).
template <Mode kMode>
__global__ void __launch_bounds__(kBlockThreads, 1)
    groupedFp8Kernel(KernelArgs a, const __grid_constant__ CUtensorMap xMap,
                     const __grid_constant__ CUtensorMap gateMap,
                     const __grid_constant__ CUtensorMap upMap) {
  using L = Layout<kMode>;
  awaitPriorKernels();
  const int columnTiles = a.n / L::kColumns;
  const int tiles = columnTiles * (a.capacity / kTile);
  const int rowsEnd = a.starts[a.groups];
  const int kBlocks = a.k / kTile;

  extern __shared__ uint8_t sharedRaw[];
  uint8_t *shared = sharedRaw + (kSwizzleAtomBytes -
                                 sharedAddress(sharedRaw) % kSwizzleAtomBytes) %
                                    kSwizzleAtomBytes;
  uint64_t *full = reinterpret_cast<uint64_t *>(shared + L::kBarriersAt);
  uint64_t *empty = full + L::kStages;
  // A stage's tiles: x, then gate (0) and up (1), or the weight's two
  // column tiles.
  auto xTile = [&](int stage) { return shared + stage * L::kStageBytes; };
  auto wTile = [&](int stage, int which) {
    return xTile(stage) + (1 + which) * kOperandBytes;
  };
  if (threadIdx.x == 0)
    for (int stage = 0; stage < L::kStages; ++stage) {
      initLoadBarrier(&full[stage]);
      initArrivalBarrier(&empty[stage], kThreads / 32); // a consumer warp's
    }
  __syncthreads();

  if (threadIdx.x >= kThreads) {
    // The producer: each stage once its 8 consumer warps gave it back.
    asm volatile(
        "setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegisters));
    if (threadIdx.x != kThreads)
      return;
    int round = 0; // blocks of k asked for so far, over the tiles
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      const TileAt at = tileAt<kMode>(a, tile, columnTiles, rowsEnd);
      if (at.none)
        break;
      const int wRow0 = at.expert * a.n + at.n0;
      for (int kb = 0; kb < kBlocks; ++kb, ++round) {
        const int stage = round % L::kStages;
        if (round >= L::kStages)
          awaitBarrier(&empty[stage], (round / L::kStages - 1) % 2);
        expectBytes(&full[stage], L::kStageBytes);
        loadTile2d(xTile(stage), &xMap, kb * kTile, at.row0, &full[stage]);
        loadTile2d(wTile(stage, 0), &gateMap, kb * kTile, wRow0, &full[stage]);
        if constexpr (kMode == Mode::SingleWide)
          loadTile2d(wTile(stage, 1), &gateMap, kb * kTile, wRow0 + kTile,
                     &full[stage]);
        else if constexpr (L::kWeights == 2)
          loadTile2d(wTile(stage, 1), &upMap, kb * kTile, wRow0, &full[stage]);
      }
    }
    return;
  }
  asm volatile(
      "setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegisters));

  // This thread's rows of a tile: 16 warp + g and + 8 of its warpgroup's
  // 64.
  const int group = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  int round = 0;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const TileAt at = tileAt<kMode>(a, tile, columnTiles, rowsEnd);
    if (at.none)
      break;
    const int rowLo = at.row0 + group * 64 + 16 * warp + g;
    // The scales of the tile's (first) 128 columns, one per block of k.
    const size_t scalesAt =
        (size_t(at.expert) * (a.n / kTile) + at.n0 / kTile) * kBlocks;
    float sums[L::kWeights][64], part[64];
#pragma unroll
    for (int which = 0; which < L::kWeights; ++which)
#pragma unroll
      for (int i = 0; i < 64; ++i)
        sums[which][i] = 0.f;
    for (int kb = 0; kb < kBlocks; ++kb, ++round) {
      const int stage = round % L::kStages;
      const float *xScales = a.xScales + size_t(kb) * a.capacity;
      const float xLo = xScales[rowLo], xHi = xScales[rowLo + 8];
      awaitBarrier(&full[stage], (round / L::kStages) % 2);
      // A warpgroup whose 64 rows are all padding leaves the tensor cores
      // to the other (its sums, zero, are not stored). (Each block's
      // products are waited for inside: ptxas keeps them unserialized.)
      if (at.rowsUsed > group * 64)
        multiplyBlock<kMode>(a, sums, part, xTile(stage), group, scalesAt + kb,
                             xLo, xHi);
      // This warp's products are done reading the stage (wgmmaWait).
      if (lane == 0)
        arriveAt(&empty[stage]);
    }
    storeTile<kMode>(a, sums, at.row0, at.n0, rowLo, t, at.rowsUsed,
                     shared + L::kStagingAt);
  }
}

/// Rows a gather block takes (a warp a row at a time) and its threads.
constexpr int kGatherRows = 32, kGatherThreads = 256;

/// A block per 32 rows: each warp copies its rows' codes 16 bytes a lane,
/// then the block writes the rows' scales ([dim / 128, count]) 32
/// consecutive rows of a block at a time. (A block per row, 57,344 blocks
/// of one 16-byte copy a thread for mini's 8x1024 prefill, took 70 us.)
__global__ void gatherFp8RowsKernel(const uint8_t *x, const float *xScales,
                                    int tokens, const int32_t *tokenOfRow,
                                    int count, int dim, const int32_t *rowsUsed,
                                    uint8_t *codes, float *scales) {
  awaitPriorKernels();
  const int row0 = int(blockIdx.x) * kGatherRows;
  const int rows =
      min(kGatherRows, (rowsUsed ? min(count, *rowsUsed) : count) - row0);
  if (rows <= 0)
    return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < rows; r += kGatherThreads / 32) {
    const int row = row0 + r, token = tokenOfRow[row];
    const uint4 *from =
        reinterpret_cast<const uint4 *>(x + size_t(token) * dim);
    uint4 *to = reinterpret_cast<uint4 *>(codes + size_t(row) * dim);
    for (int i = lane; i < dim / 16; i += 32)
      to[i] = from[i];
  }
  const int blocks = dim / kTile;
  for (int e = threadIdx.x; e < blocks * kGatherRows; e += kGatherThreads) {
    const int b = e / kGatherRows, r = e % kGatherRows;
    if (r < rows)
      scales[size_t(b) * count + row0 + r] =
          xScales[size_t(b) * tokens + tokenOfRow[row0 + r]];
  }
}

bool aligned16(const void *p) {
  return p && reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

/// Launches mode kMode over [capacity / 128] row tiles and [n / kColumns]
/// column tiles, a block a tile or (persistent) a block an SM: the tensor
/// maps of x and the weights (`up` null for one).
template <Mode kMode>
cudaError_t launchGrouped(const KernelArgs &a, const uint8_t *gate,
                          const uint8_t *up, const GroupedFp8Options &options,
                          cudaStream_t stream) {
  using L = Layout<kMode>;
  alignas(64) CUtensorMap xMap{}, gateMap{}, upMap{};
  const uint64_t wRows = uint64_t(a.groups) * a.n;
  if (!swizzledByteMap(xMap, a.x, uint64_t(a.capacity), uint64_t(a.k),
                       uint64_t(a.k), kTile) ||
      !swizzledByteMap(gateMap, gate, wRows, uint64_t(a.k), uint64_t(a.k),
                       kTile) ||
      (up &&
       !swizzledByteMap(upMap, up, wRows, uint64_t(a.k), uint64_t(a.k), kTile)))
    return cudaErrorNotSupported;
  if (!up)
    upMap = gateMap; // (not read)
  auto *kernel = groupedFp8Kernel<kMode>;
  cudaError_t error =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           int(L::kSharedBytes));
  if (error != cudaSuccess)
    return error;
  int blocks = (a.n / L::kColumns) * (a.capacity / kTile);
  if (options.persistent) {
    int device = 0, processors = 0;
    if ((error = cudaGetDevice(&device)) != cudaSuccess ||
        (error =
             cudaDeviceGetAttribute(&processors, cudaDevAttrMultiProcessorCount,
                                    device)) != cudaSuccess)
      return error;
    blocks = std::min(blocks, processors);
  }
  error = launchOverlapped(kernel, unsigned(blocks), kBlockThreads,
                           L::kSharedBytes, stream, a, xMap, gateMap, upMap);
  return error != cudaSuccess ? error : cudaGetLastError();
}

bool shapeFits(int groups, int capacity, int n, int k) {
  return groups > 0 && n > 0 && n % kTile == 0 && k > 0 && k % kTile == 0 &&
         capacity > 0 && capacity % kTile == 0;
}

} // namespace

bool groupedFp8PairFits(const GroupedFp8PairArgs &a) {
  const bool bf16Out = a.y && !a.yCodes && !a.yScales && aligned16(a.y);
  const bool fp8Out = !a.y && aligned16(a.yCodes) && a.yScales;
  return shapeFits(a.groups, a.capacity, a.n, a.k) && aligned16(a.x) &&
         aligned16(a.gate) && aligned16(a.up) && (bf16Out || fp8Out) &&
         a.xScales && a.gateScales && a.upScales && a.starts;
}

cudaError_t groupedGemmFp8Pair(const GroupedFp8PairArgs &a,
                               cudaStream_t stream) {
  if (!groupedFp8PairFits(a))
    return cudaErrorInvalidValue;
  KernelArgs k;
  k.x = a.x, k.xScales = a.xScales;
  k.wScales[0] = a.gateScales, k.wScales[1] = a.upScales;
  k.y = a.y, k.yCodes = a.yCodes, k.yScales = a.yScales;
  k.starts = a.starts, k.ends = a.ends;
  k.groups = a.groups, k.capacity = a.capacity, k.n = a.n, k.k = a.k;
  k.wideStores = a.options.wideStores;
  return a.y ? launchGrouped<Mode::PairBf16>(k, a.gate, a.up, a.options, stream)
             : launchGrouped<Mode::PairFp8>(k, a.gate, a.up, a.options, stream);
}

bool groupedFp8Fits(const GroupedFp8Args &a) {
  return shapeFits(a.groups, a.capacity, a.n, a.k) && aligned16(a.x) &&
         aligned16(a.w) && (a.y == nullptr) != (a.yF32 == nullptr) &&
         aligned16(a.y ? static_cast<const void *>(a.y)
                       : static_cast<const void *>(a.yF32)) &&
         a.xScales && a.wScales && a.starts;
}

cudaError_t groupedGemmFp8(const GroupedFp8Args &a, cudaStream_t stream) {
  if (!groupedFp8Fits(a))
    return cudaErrorInvalidValue;
  KernelArgs k;
  k.x = a.x, k.xScales = a.xScales;
  k.wScales[0] = a.wScales;
  k.y = a.y, k.yF32 = a.yF32;
  k.starts = a.starts, k.ends = a.ends;
  k.groups = a.groups, k.capacity = a.capacity, k.n = a.n, k.k = a.k;
  k.wideStores = a.options.wideStores;
  if (a.options.wideColumns && a.n % (2 * kTile) == 0) {
    k.wScales[1] = a.wScales + a.k / kTile; // the next column block's
    return launchGrouped<Mode::SingleWide>(k, a.w, nullptr, a.options, stream);
  }
  return launchGrouped<Mode::Single>(k, a.w, nullptr, a.options, stream);
}

cudaError_t gatherFp8Rows(const uint8_t *x, const float *xScales, int tokens,
                          const int32_t *tokenOfRow, int count, int dim,
                          uint8_t *codes, float *scales, cudaStream_t stream,
                          const int32_t *rowsUsed) {
  if (count <= 0)
    return cudaSuccess;
  if (dim % kTile != 0 || !aligned16(x) || !aligned16(codes))
    return cudaErrorInvalidValue;
  const cudaError_t error = launchOverlapped(
      gatherFp8RowsKernel, unsigned((count + kGatherRows - 1) / kGatherRows),
      kGatherThreads, 0, stream, x, xScales, tokens, tokenOfRow, count, dim,
      rowsUsed, codes, scales);
  return error != cudaSuccess ? error : cudaGetLastError();
}

} // namespace melt::rt::cuda
