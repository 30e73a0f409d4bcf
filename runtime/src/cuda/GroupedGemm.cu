//===- GroupedGemm.cu - one launch for every expert's product -------------===//
//
// A block: a [128 x 128] tile of y, two warpgroups of 64 rows each (wgmma
// m64n128k16, four k16 steps per 64-wide block of k). Thread 0 keeps the
// next blocks of k coming into a ring of stages (three for a single
// product, two blocks an SM; four for a gate/up pair), each stage's x and
// w tiles ([128 x 64] BF16 each, in the 128-byte swizzle) brought by TMA and
// counted on the stage's mbarrier. A stage is refilled once both
// warpgroups' products of it are done (a wgmma wait for all but the
// latest group, then a barrier).
//
// FP8 weights: a stage holds w's [128 x 64] codes unswizzled (8 KB); once
// they land, every thread widens 32 of them into one of two BF16 tiles in
// the swizzle (a barrier, then the products read it). The widening of
// block kb runs while the tensor cores are still on block kb - 1.
//
// A gate/up pair (w2 given): each stage holds both weights' tiles, each
// warpgroup keeps two accumulators, and the epilogue writes SiLU(gate) *
// up, so the activations leave the block once and x is read once for both.
// A single product with BF16 weights takes 256 columns a block where n
// allows (MELT_CUDA_GROUPED_WIDE_BF16): its weight's two column tiles a
// stage, one after the other, are one [256 x 64] K-major operand of one
// m64n256 wgmma a k16 step, so x's rows are read from shared memory once
// for 256 columns, not once for each 128 (mini's down 8.5% faster, V3's
// 4-7%). The pair's two weights as one m64n256 operand were measured too
// and gained nothing (bench/results/grouped_bf16_n256_s34_h200.txt).
//
// BF16 rows leave 16 bytes a lane (FragmentStores.cuh: the quad's lanes
// exchange their pairs first), whole 32-byte sectors a store: mini's down
// with BF16 rows 479 against 588 us, the pair 1016 against 1064
// (bench/results/session49_h200/call1-log.txt). Not with FP8 weights:
// there ptxas then serializes the kernel's wgmma.
//
// Given where each group's rows end (GroupedGemmArgs::ends), a group's
// padding rows are not stored, and a warpgroup whose 64 rows are all
// padding (about half of the groups' last tiles) issues no products, its
// partner having the tensor cores to itself: mini-bf16's 8x1024 prefill
// +1.3% (bench/results/session46_h200.txt).
//
//===----------------------------------------------------------------------===//
#include "cuda/GroupedGemm.h"

#include "EnvSwitch.h"

#include "cuda/BulkTensorCopy.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/E4m3.cuh"
#include "cuda/FragmentStores.cuh"
#include "cuda/GroupOfRow.cuh"
#include "cuda/Silu.cuh"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/TensorMaps.h"
#include "cuda/Wgmma.cuh"

#include <type_traits>

namespace melt::rt::cuda {
namespace {

constexpr int kTileRows = kGroupedGemmRows, kTileColumns = 128;
constexpr int kBlockK = 64, kThreads = 256;
constexpr int kOperandBytes = kTileRows * kBlockK * 2; // a BF16 tile

/// Shared memory: the ring's stages (x's tile, then the weights' tiles as
/// loaded: w's, and with kPair w2's), then for FP8 weights two widened
/// tiles of each weight, then the stages' barriers. A pair's four stages
/// fill an SM; a single product's three leave room for a second block,
/// whose products run while this one fills its ring or writes its tile.
template <bool kFp8, bool kPair> struct SharedLayout {
  static constexpr int stages = kPair ? 4 : 3;
  static constexpr int blocksPerSm = kPair ? 1 : 2;
  static constexpr int weights = kPair ? 2 : 1;
  static constexpr int wBytes = kFp8 ? kTileColumns * kBlockK : kOperandBytes;
  static constexpr int stageBytes = kOperandBytes + weights * wBytes;
  static constexpr int widenedAt = stages * stageBytes;
  static constexpr size_t barriersAt =
      size_t(widenedAt) + (kFp8 ? 2 * weights * kOperandBytes : 0);
  static constexpr size_t bytes =
      barriersAt + stages * sizeof(uint64_t) + kSwizzleAtomBytes;
  static_assert(stageBytes % kSwizzleAtomBytes == 0, "tiles stay aligned");
  static_assert(blocksPerSm * (bytes + 1024) <= 228 * 1024,
                "blocksPerSm blocks fit one SM's shared memory");
};

/// Thread i widens row i / 2 of w's [128 x 64] FP8 codes, its half i % 2
/// (32 codes, four 16-byte chunks of the BF16 row), times `scale`, into
/// the swizzled BF16 tile.
__device__ __forceinline__ void widenTile(const uint8_t *codes,
                                          uint8_t *widened, float scale) {
  const int row = threadIdx.x / 2, half = threadIdx.x % 2;
  const uint4 *from =
      reinterpret_cast<const uint4 *>(codes + row * kBlockK + half * 32);
#pragma unroll
  for (int part = 0; part < 2; ++part) {
    const uint4 words = from[part];
    const uint32_t word[4] = {words.x, words.y, words.z, words.w};
#pragma unroll
    for (int chunk = 0; chunk < 2; ++chunk) {
      uint32_t packed[4];
#pragma unroll
      for (int pair = 0; pair < 2; ++pair) {
        float v[4];
        e4m3Values(word[2 * chunk + pair], v);
        packed[2 * pair] = packBf16(v[0] * scale, v[1] * scale);
        packed[2 * pair + 1] = packBf16(v[2] * scale, v[3] * scale);
      }
      *reinterpret_cast<uint4 *>(
          widened + swizzledOffset(row, 4 * half + 2 * part + chunk)) =
          make_uint4(packed[0], packed[1], packed[2], packed[3]);
    }
  }
}

/// kN256 (BF16 weights, a single product): m64n256 products over the
/// weight's two column tiles a stage (256 columns a block, in the pair's
/// shared layout).
template <bool kFp8, bool kPair, bool kN256 = false>
__global__ void
__launch_bounds__(kThreads, SharedLayout<kFp8, kPair || kN256>::blocksPerSm)
    groupedGemmKernel(GroupedGemmArgs a,
                      const __grid_constant__ CUtensorMap xMap,
                      const __grid_constant__ CUtensorMap wMap,
                      const __grid_constant__ CUtensorMap w2Map) {
  using Layout = SharedLayout<kFp8, kPair || kN256>;
  constexpr int kWeights = Layout::weights, kStages = Layout::stages;
  static_assert(!kN256 || (!kFp8 && !kPair), "a BF16 single product");
  // Columns of y a block: two tiles with kN256.
  constexpr int kColumns = kN256 ? 2 * kTileColumns : kTileColumns;
  awaitPriorKernels();
  const int row0 = int(blockIdx.y) * kTileRows;
  if (row0 >= a.starts[a.groups]) // past the last group: nothing to do
    return;
  const int lo = groupOfRow(a.starts, a.groups, row0);
  // This tile's rows of interest (the rest padding, at the group's end).
  const int rowsUsed = a.ends ? min(kTileRows, a.ends[lo] - row0) : kTileRows;
  const int n0 = int(blockIdx.x) * kColumns;
  const int wRow0 = lo * a.n + n0;

  extern __shared__ uint8_t sharedRaw[];
  uint8_t *shared = sharedRaw + (kSwizzleAtomBytes -
                                 sharedAddress(sharedRaw) % kSwizzleAtomBytes) %
                                    kSwizzleAtomBytes;
  uint64_t *full = reinterpret_cast<uint64_t *>(shared + Layout::barriersAt);
  auto xTile = [&](int stage) { return shared + stage * Layout::stageBytes; };
  auto wTile = [&](int stage, int which) {
    return xTile(stage) + kOperandBytes + which * Layout::wBytes;
  };
  auto widened = [&](int kb, int which) {
    return shared + Layout::widenedAt +
           ((kb % 2) * kWeights + which) * kOperandBytes;
  };
  // FP8: the scales of this tile's 128 columns, one per 128 of k.
  const size_t scalesAt =
      (size_t(lo) * (a.n / 128) + n0 / 128) * ((a.k + 127) / 128);
  if (threadIdx.x == 0)
    for (int stage = 0; stage < kStages; ++stage)
      initLoadBarrier(&full[stage]);
  __syncthreads();

  const int kBlocks = a.k / kBlockK;
  // Block kb of k into its stage (thread 0).
  auto load = [&](int kb) {
    const int stage = kb % kStages;
    expectBytes(&full[stage], Layout::stageBytes);
    loadTile2d(xTile(stage), &xMap, kb * kBlockK, row0, &full[stage]);
    loadTile2d(wTile(stage, 0), &wMap, kb * kBlockK, wRow0, &full[stage]);
    if (kPair)
      loadTile2d(wTile(stage, 1), &w2Map, kb * kBlockK, wRow0, &full[stage]);
    else if (kN256) // the weight's next 128 rows, right after
      loadTile2d(wTile(stage, 1), &wMap, kb * kBlockK, wRow0 + kTileColumns,
                 &full[stage]);
  };
  if (threadIdx.x == 0)
    for (int kb = 0; kb < min(kStages - 1, kBlocks); ++kb)
      load(kb);

  const int group = threadIdx.x / 128;
  // A warpgroup whose 64 rows are all padding issues no products: the
  // other one has the tensor cores to itself.
  const bool multiplies = rowsUsed > group * 64;
  // Each weight tile's m64n128 accumulators, one after the other: with
  // kN256 the m64n256 ones of the two column tiles together.
  float accumulators[kWeights * 64];
  auto acc = [&](int m) -> float(&)[64] {
    return *reinterpret_cast<float(*)[64]>(accumulators + 64 * m);
  };
  // The loop over k, with or without this warpgroup's products: two
  // copies of it, the one without them returning after it and issuing no
  // wgmma fence, commit or wait, so that no wgmma instruction and no
  // accumulator sits on a divergent path (where one does, ptxas
  // serializes every wgmma of the kernel: mini's pair took 1150 against
  // 944 us a layer).
  auto mainLoop = [&](auto multiply) {
    for (int kb = 0; kb < kBlocks; ++kb) {
      const int stage = kb % kStages;
      float scale[kWeights] = {};
      if (kFp8) {
        scale[0] = a.wScales[scalesAt + kb * kBlockK / 128];
        if (kPair)
          scale[kWeights - 1] = a.w2Scales[scalesAt + kb * kBlockK / 128];
      }
      awaitBarrier(&full[stage], (kb / kStages) % 2);
      if (kFp8) {
        // widened(kb, .) was last read by block kb - 2's products, done in
        // both warpgroups before the previous iteration's closing barrier.
#pragma unroll
        for (int m = 0; m < kWeights; ++m)
          widenTile(wTile(stage, m), widened(kb, m), scale[m]);
        fenceSharedForWgmma();
        __syncthreads();
      }
      if constexpr (decltype(multiply)::value) {
        const uint64_t x =
            kMajorDescriptor(xTile(stage) + group * 64 * kSwizzleRowBytes);
        wgmmaFence();
        if constexpr (kN256) {
          // (The two column tiles one after the other: one operand.)
          const uint64_t w = kMajorDescriptor(wTile(stage, 0));
#pragma unroll
          for (int step = 0; step < kBlockK / 16; ++step)
            wgmma64x256(*reinterpret_cast<float(*)[128]>(accumulators),
                        advanced(x, step * 32), advanced(w, step * 32),
                        kb > 0 || step > 0);
        } else {
#pragma unroll
          for (int m = 0; m < kWeights; ++m) {
            const uint64_t w =
                kMajorDescriptor(kFp8 ? widened(kb, m) : wTile(stage, m));
#pragma unroll
            for (int step = 0; step < kBlockK / 16; ++step)
              wgmma64x128(acc(m), advanced(x, step * 32),
                          advanced(w, step * 32), kb > 0 || step > 0);
          }
        }
        wgmmaCommit();
        // The products of block kb - 1 done in both warpgroups: its stage,
        // the one block kb + kStages - 1 goes to, may be refilled.
        wgmmaWait<1>();
      }
      __syncthreads();
      if (threadIdx.x == 0 && kb + kStages - 1 < kBlocks)
        load(kb + kStages - 1);
    }
  };
  if (!multiplies) { // (its rows all padding: nothing to store)
    mainLoop(std::false_type{});
    return;
  }
#pragma unroll
  for (int i = 0; i < kWeights * 64; ++i)
    accumulators[i] = 0.f;
  mainLoop(std::true_type{});
  wgmmaWait<0>();

  // BF16 rows 16 bytes a lane where asked for; with FP8 weights (widened
  // here) 4 bytes, as the fragments hold them: with the 16-byte stores
  // ptxas serializes those kernels' wgmma (warning C7515).
  const bool wideStores = !kFp8 && a.wideStores;
  // Rows 16 warp + g and + 8 of this warpgroup's 64; columns 8 j + 2 t, + 1.
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int inTile = group * 64 + 16 * warp + g + 8 * half;
    if (inTile >= rowsUsed) // padding: no one reads it (the quad's row)
      continue;
    const size_t row = size_t(row0 + inTile);
    const size_t at = row * a.n + n0 + 2 * t;
    if (kPair) {
      // SiLU(gate) * up of the two products, each rounded to BF16 first:
      // the values of the separate products and the elementwise SiLU-mul.
      uint32_t pairs[16];
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int i = 4 * j + 2 * half;
        pairs[j] =
            packBf16(siluTimesOfBf16(acc(0)[i], acc(kWeights - 1)[i]),
                     siluTimesOfBf16(acc(0)[i + 1], acc(kWeights - 1)[i + 1]));
      }
      storeFragmentRow(a.y + row * a.n + n0, pairs, lane, wideStores);
    } else {
      // Each column tile (two with kN256) from its accumulators.
#pragma unroll
      for (int m = 0; m < kWeights; ++m) {
        if (a.yF32) {
#pragma unroll
          for (int j = 0; j < 16; ++j) {
            const int i = 4 * j + 2 * half;
            *reinterpret_cast<float2 *>(a.yF32 + at + kTileColumns * m +
                                        8 * j) =
                make_float2(acc(m)[i], acc(m)[i + 1]);
          }
          continue;
        }
        uint32_t pairs[16];
#pragma unroll
        for (int j = 0; j < 16; ++j)
          pairs[j] =
              packBf16(acc(m)[4 * j + 2 * half], acc(m)[4 * j + 2 * half + 1]);
        storeFragmentRow(a.y + row * a.n + n0 + kTileColumns * m, pairs, lane,
                         wideStores);
      }
    }
  }
}

} // namespace

bool groupedGemmFits(const GroupedGemmArgs &a) {
  static_assert(kTileColumns == 128, "a column tile is one block of scales");
  // A pair: its second weights in the first's type, BF16 output.
  if (a.w2 && (a.yF32 || (a.w2Scales != nullptr) != (a.wScales != nullptr) ||
               reinterpret_cast<uintptr_t>(a.w2) % 16 != 0))
    return false;
  if (!a.w2 && a.w2Scales)
    return false;
  return a.groups > 0 && a.n > 0 && a.n % kTileColumns == 0 && a.k > 0 &&
         a.k % kBlockK == 0 && a.capacity > 0 && a.capacity % kTileRows == 0 &&
         a.x && a.w && (a.y != nullptr) != (a.yF32 != nullptr) && a.starts &&
         reinterpret_cast<uintptr_t>(a.x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a.w) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a.y) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a.yF32) % 16 == 0;
}

namespace {

template <bool kFp8, bool kPair, bool kN256 = false>
cudaError_t launch(const GroupedGemmArgs &a, const CUtensorMap &xMap,
                   const CUtensorMap &wMap, const CUtensorMap &w2Map,
                   cudaStream_t stream) {
  constexpr size_t shared = SharedLayout < kFp8, kPair || kN256 > ::bytes;
  auto kernel = groupedGemmKernel<kFp8, kPair, kN256>;
  cudaError_t error = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared));
  if (error != cudaSuccess)
    return error;
  const int columns = kN256 ? 2 * kTileColumns : kTileColumns;
  const dim3 grid(a.n / columns, a.capacity / kTileRows);
  error = launchOverlapped(kernel, grid, kThreads, shared, stream, a, xMap,
                           wMap, w2Map);
  return error != cudaSuccess ? error : cudaGetLastError();
}

} // namespace

cudaError_t groupedGemmBf16(const GroupedGemmArgs &a, cudaStream_t stream) {
  if (!groupedGemmFits(a))
    return cudaErrorInvalidValue;
  const bool fp8 = a.wScales != nullptr, pair = a.w2 != nullptr;
  alignas(64) CUtensorMap xMap{}, wMap{}, w2Map{};
  const uint64_t wRows = uint64_t(a.groups) * a.n;
  auto weightMap = [&](CUtensorMap &map, const void *w) {
    return fp8 ? plainByteMap(map, w, wRows, uint64_t(a.k), uint64_t(a.k),
                              kTileColumns, kBlockK)
               : swizzledBf16Map(map, w, wRows, uint64_t(a.k), uint64_t(a.k),
                                 kTileColumns);
  };
  if (!swizzledBf16Map(xMap, a.x, uint64_t(a.capacity), uint64_t(a.k),
                       uint64_t(a.k), kTileRows) ||
      !weightMap(wMap, a.w) || !weightMap(w2Map, pair ? a.w2 : a.w))
    return cudaErrorNotSupported;
  if (fp8)
    return pair ? launch<true, true>(a, xMap, wMap, w2Map, stream)
                : launch<true, false>(a, xMap, wMap, w2Map, stream);
  if (pair)
    return launch<false, true>(a, xMap, wMap, w2Map, stream);
  // MELT_CUDA_GROUPED_WIDE_BF16=0: 128 columns a block instead of 256.
  static const bool wide = envSwitch("MELT_CUDA_GROUPED_WIDE_BF16", true);
  return wide && a.n % (2 * kTileColumns) == 0
             ? launch<false, false, true>(a, xMap, wMap, w2Map, stream)
             : launch<false, false>(a, xMap, wMap, w2Map, stream);
}

} // namespace melt::rt::cuda
