//===- Fp8FewTokens.cu - FP8 block-scaled GEMM for up to 8 tokens ---------===//
//
// y[M, N] = x[M, K] W[N, K]^T for M <= 8 (a decode step), FP8 e4m3
// operands with DeepSeek-V3 block scales, for weights of a few MB, where
// the launch and the memory round trips are the cost, not the bandwidth:
// one launch, one pass, no scratch.
//
// A block takes 16 rows of W at a time (the blocks resident at once take
// the 16-row tiles in turn), its 8 warps splitting K. Each warp streams
// its (tile, K block) items through a ring of its own in shared memory
// (cp.async, six items ahead, on across its tiles; only the warp reads
// them, so that __syncwarp() orders them). Its K range of x is staged
// once in shared memory as FP8 codes: copied, or quantized from F32 with
// quantizeRowsFp8's arithmetic (silu(x) * up where up is given: an MLP's
// SiLU-mul folded into its down projection; zeros beyond kIn, for a weight
// stored with its K padded). At the end of a tile the warps' sums are
// added in shared memory in a fixed order and rounded to BF16.
//
// The product runs on tensor cores as mma.sync.m16n8k16 with FP16
// operands and FP32 accumulation: every e4m3 value is exact in FP16, and
// sm_90 has no FP8 mma.sync in hardware (ptxas would widen both operands
// before every FP16 HMMA). Per 128-wide K block a warp sums into a
// temporary FP32 accumulator, which it then adds to the result times the
// block's weight scale and each token's input scale (FP32 promotion per
// 128 values, as DeepSeek-V3 does). Because the sum over a K block is
// order-free, lane (g, t) takes bytes 4 s .. 4 s + 3 of its 32-byte chunk
// t of rows g and g + 8 at step s, and the same bytes of token g's x: a
// permuted order of K, the same for W and x, so that every load is a
// 16-byte vector. The FP8-x and F32-x forms share everything from the
// codes on: their results agree bit for bit.
//
//===----------------------------------------------------------------------===//
#include "cuda/Fp8SmallM.h"

#include "EnvSwitch.h"

#include "cuda/AsyncCopy.cuh"
#include "cuda/BlockQuantize.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/E4m3.cuh"
#include "cuda/Silu.cuh"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/VectorLoads.cuh"
#include "cuda/WarpReduce.cuh"

#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

using namespace melt::rt::cuda;

namespace {

constexpr int kRowsPerScale = 128, kWarps = 8, kThreads = kWarps * 32;
constexpr int kKBlock = 128;
/// mma.m16n8k16 steps per K block.
constexpr int kSteps = kKBlock / 16;

/// What one launch reads.
struct Operands {
  const uint8_t *x;
  const float *xScales, *xF32, *upF32;
  int kIn;
  const uint8_t *w;
  const float *wScales;
  int m, n, k;
};

/// One K block of a thread's rows (r and r + 8: 32 bytes each, chunk t).
struct RowFragment {
  uint4 lo[2], hi[2];
};

/// Items (16 rows x one K block of W, 2 KB) in each warp's ring in shared
/// memory: kFewTokensRing - 1 stream in while one is multiplied.
constexpr int kFewTokensRing = 7;
constexpr size_t kItemBytes = 16 * kKBlock;
constexpr size_t kFewTokensRingBytes = kWarps * kFewTokensRing * kItemBytes;

/// The few-tokens kernel's dynamic shared memory: the warps' weight rings,
/// then all of x as FP8 codes ([K/128][m][128]) and its scales
/// ([K/128][m]).
size_t fewTokensSharedBytes(int m, int k) {
  return kFewTokensRingBytes + size_t(m) * k +
         size_t(m) * (k / kKBlock) * sizeof(float);
}

/// The most the few-tokens kernel may take (it is alone on its
/// multiprocessor; this leaves room for its static shared memory).
constexpr size_t kFewTokensSharedMax = 218u << 10;

/// Row r's 16-byte chunk c of an item, swizzled: the 8 rows a quarter warp
/// reads (chunks 2 t and 2 t + 1 of rows g) fall on different banks.
__device__ __forceinline__ int itemOffset(int r, int c) {
  return r * kKBlock + ((c ^ (r & 7)) * 16);
}

/// Pairs of (token, K block) a warp quantizes at once from F32: their
/// loads in flight together.
constexpr int kQuantizeBatch = 8;

/// The weight bytes up to which one pass pays (see fp8FewTokensPay).
constexpr double kFewTokensWeightMax = 24e6;

/// Warp `warp`'s K blocks [kbBegin, kbEnd) of x into shared memory as
/// codes and scales: copied (from FP8) or quantized with quantizeRowsFp8's
/// arithmetic (from F32: a warp per token and K block, lane l values 4 l ..
/// 4 l + 3, silu(x) * up where up is given; values beyond kIn are zeros).
/// Only this warp reads them: a __syncwarp() after suffices.
template <bool kF32>
__device__ __forceinline__ void stageWarpX(const Operands &o, int kbBegin,
                                           int kbEnd, uint8_t *codes,
                                           float *scales, int lane) {
  const int m = o.m, count = max(0, kbEnd - kbBegin) * m;
  if constexpr (kF32) {
    for (int first = 0; first < count; first += kQuantizeBatch) {
      float4 v[kQuantizeBatch], u[kQuantizeBatch];
#pragma unroll
      for (int b = 0; b < kQuantizeBatch; ++b) {
        const int pair = first + b, kb = kbBegin + pair / max(m, 1),
                  token = pair % m;
        const int column = kb * kKBlock + lane * 4;
        const bool present = pair < count && column < o.kIn;
        const size_t at = size_t(token) * o.kIn + column;
        v[b] = present ? __ldg(reinterpret_cast<const float4 *>(o.xF32 + at))
                       : make_float4(0.f, 0.f, 0.f, 0.f);
        u[b] = present && o.upF32
                   ? __ldg(reinterpret_cast<const float4 *>(o.upF32 + at))
                   : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int b = 0; b < kQuantizeBatch; ++b) {
        const int pair = first + b;
        if (pair >= count) // warp-uniform
          break;
        const int kb = kbBegin + pair / m, token = pair % m;
        float4 q = v[b];
        if (o.upF32)
          q = make_float4(siluTimes(q.x, u[b].x), siluTimes(q.y, u[b].y),
                          siluTimes(q.z, u[b].z), siluTimes(q.w, u[b].w));
        const float amax = warpMax(fmaxf(fmaxf(fabsf(q.x), fabsf(q.y)),
                                         fmaxf(fabsf(q.z), fabsf(q.w))));
        const float scale = gemmInputScale(amax);
        reinterpret_cast<uint32_t *>(codes +
                                     (size_t(kb) * m + token) * kKBlock)[lane] =
            gemmInputCodes(q.x, q.y, q.z, q.w, 1.f / scale);
        if (lane == 0)
          scales[kb * m + token] = scale;
      }
    }
  } else {
    // 8 copies of 16 bytes per (token, K block), and its scale.
    for (int i = lane; i < count * 8; i += 32) {
      const int pair = i / 8, chunk = i % 8;
      const int kb = kbBegin + pair / m, token = pair % m;
      copyAsync16(codes + (size_t(kb) * m + token) * kKBlock + chunk * 16,
                  o.x + size_t(token) * o.k + size_t(kb) * kKBlock +
                      chunk * 16);
      if (chunk == 0)
        copyAsync4(scales + kb * m + token, o.xScales + size_t(kb) * m + token);
    }
    commitCopies();
    awaitCopies<0>();
  }
  __syncwarp();
}

/// Up to 8 tokens: 16 weight rows at a time per block, its warps splitting
/// K (no split over blocks: no scratch, no second pass), the blocks
/// resident at once taking the 16-row tiles in turn. Each warp streams its
/// (tile, K block) sequence's weights through its own ring in shared
/// memory (cp.async, kFewTokensRing - 1 items ahead, on across tiles; only
/// the warp reads them, so that __syncwarp() orders them); its K range of x
/// waits in shared memory as FP8 codes (staged once: token g's chunk t is the B
/// fragment lane (g, t) reads); at the end of a tile the warps' sums are added
/// in shared memory in a fixed order.
template <bool kF32>
__global__ void __launch_bounds__(kThreads)
    fp8FewTokensKernel(Operands o, __nv_bfloat16 *y, float *yF32) {
  const int m = o.m, n = o.n, k = o.k;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, t = lane % 4;
  const int kBlocks = k / kKBlock, tiles = n / 16;
  const int perWarp = (kBlocks + kWarps - 1) / kWarps;
  const int kbFirst = warp * perWarp;
  // Item q of every warp: tile blockIdx.x + (q / perWarp) * gridDim.x, K
  // block kbFirst + q % perWarp (none past kBlocks: the warp idles there,
  // but keeps the block's count of items, and so of barriers).
  const int mine = (tiles - int(blockIdx.x) + int(gridDim.x) - 1) / gridDim.x;
  const int items = mine * perWarp;
  auto tileOf = [&](int q) {
    return int(blockIdx.x) + q / perWarp * gridDim.x;
  };
  auto kbOf = [&](int q) { return kbFirst + q % perWarp; };
  extern __shared__ __align__(16) uint8_t sharedBytes[];
  // This warp's ring of items, copied in turn: lane l copies chunks l, l +
  // 32, l + 64 and l + 96 of an item (8 lanes a 128-byte row), and its
  // scale (lane 0, into the ring's scales).
  uint8_t *ring = sharedBytes + size_t(warp) * kFewTokensRing * kItemBytes;
  __shared__ float ringScales[kWarps][kFewTokensRing];
  auto copyItem = [&](int q) {
    const int kb = kbOf(q), row0 = tileOf(q) * 16, slot = q % kFewTokensRing;
    if (kb < kBlocks) {
      uint8_t *to = ring + slot * kItemBytes;
#pragma unroll
      for (int i = lane; i < 16 * 8; i += 32) {
        const int r = i / 8, c = i % 8;
        copyAsync16(to + itemOffset(r, c),
                    o.w + size_t(row0 + r) * k + size_t(kb) * kKBlock + c * 16);
      }
      if (lane == 0)
        copyAsync4(&ringScales[warp][slot],
                   o.wScales + size_t(row0 / kRowsPerScale) * kBlocks + kb);
    }
    commitCopies(); // one group per item, maybe empty
  };

  // Weights are constant: the first items stream in before the kernel ahead
  // has ended.
  for (int q = 0; q < kFewTokensRing - 1; ++q)
    if (q < items)
      copyItem(q);
    else
      commitCopies();
  awaitPriorKernels();
  // All of this warp's K range of x, once, as codes in shared memory.
  uint8_t *xCodes = sharedBytes + kFewTokensRingBytes;
  float *xScales = reinterpret_cast<float *>(xCodes + size_t(m) * k);
  stageWarpX<kF32>(o, kbFirst, min(kBlocks, kbFirst + perWarp), xCodes, xScales,
                   lane);

  __shared__ float4 sums[2][kWarps][32];
  float result[4] = {0.f, 0.f, 0.f, 0.f};
  for (int q = 0; q < items; ++q) {
    {
      const int kb = kbOf(q);
      const bool real = kb < kBlocks; // warp-uniform
      // Item q's copies (the groups after it may still be in flight), shown
      // to the whole warp; the slot refilled next was read by every lane
      // in the last item.
      awaitCopies<kFewTokensRing - 2>();
      __syncwarp();
      if (q + kFewTokensRing - 1 < items)
        copyItem(q + kFewTokensRing - 1);
      else
        commitCopies();
      const uint8_t *item = ring + (q % kFewTokensRing) * kItemBytes;
      RowFragment cur;
      {
        const uint4 *lo = reinterpret_cast<const uint4 *>(item);
        cur.lo[0] = lo[itemOffset(group, 2 * t) / 16];
        cur.lo[1] = lo[itemOffset(group, 2 * t + 1) / 16];
        cur.hi[0] = lo[itemOffset(group + 8, 2 * t) / 16];
        cur.hi[1] = lo[itemOffset(group + 8, 2 * t + 1) / 16];
      }
      const float weightScale = ringScales[warp][q % kFewTokensRing];
      // C fragment: rows group and group + 8, tokens 2 t and 2 t + 1.
      uint4 codes[2] = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};
      float s0 = 0.f, s1 = 0.f;
      if (real) {
        if (group < m) {
          const uint4 *from = reinterpret_cast<const uint4 *>(
              xCodes + (size_t(kb) * m + group) * kKBlock + t * 32);
          codes[0] = from[0];
          codes[1] = from[1];
        }
        s0 = 2 * t < m ? xScales[kb * m + 2 * t] : 0.f;
        s1 = 2 * t + 1 < m ? xScales[kb * m + 2 * t + 1] : 0.f;
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int step = 0; step < kSteps; ++step) {
          const uint32_t l = wordOf(cur.lo, step), h = wordOf(cur.hi, step),
                         x = wordOf(codes, step);
          mma16816Half(acc, e4m3PairAsHalves(l), e4m3PairAsHalves(h),
                       e4m3PairAsHalves(l >> 16), e4m3PairAsHalves(h >> 16),
                       e4m3PairAsHalves(x), e4m3PairAsHalves(x >> 16));
        }
        s0 *= weightScale, s1 *= weightScale;
        result[0] += acc[0] * s0;
        result[1] += acc[1] * s1;
        result[2] += acc[2] * s0;
        result[3] += acc[3] * s1;
      }
      if (q % perWarp != perWarp - 1)
        continue;
      // The tile's end: the warps' sums, added in warp order. Two buffers:
      // one is written again only after every thread has passed the next
      // tile's barrier, and so has read it.
      auto &tileSums = sums[(q / perWarp) & 1];
      tileSums[warp][lane] =
          make_float4(result[0], result[1], result[2], result[3]);
      result[0] = result[1] = result[2] = result[3] = 0.f;
      __syncthreads();
      const int r = threadIdx.x % 16, token = threadIdx.x / 16;
      if (token < m) { // m <= 8: threads 0 .. 16 m - 1
        // Element (r, token) is in lane (r % 8, token / 2), value
        // (r / 8) * 2 + token % 2.
        const int from = (r % 8) * 4 + token / 2,
                  which = (r / 8) * 2 + token % 2;
        float sum = 0.f;
#pragma unroll
        for (int wi = 0; wi < kWarps; ++wi) {
          const float4 v = tileSums[wi][from];
          sum += which == 0 ? v.x : which == 1 ? v.y : which == 2 ? v.z : v.w;
        }
        const __nv_bfloat16 rounded = __float2bfloat16(sum);
        const size_t at = size_t(token) * n + tileOf(q) * 16 + r;
        if constexpr (kF32)
          yF32[at] = __bfloat162float(rounded);
        else
          y[at] = rounded;
      }
    }
  }
}

/// Blocks of the few-tokens kernel resident at once on a multiprocessor
/// (its shared memory allowed, once), 0 where it cannot run.
template <bool kF32> int fewTokensBlocksPerSm() {
  static const int perSm = [] {
    if (cudaFuncSetAttribute(fp8FewTokensKernel<kF32>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(kFewTokensSharedMax)) != cudaSuccess)
      return 0;
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &blocks, fp8FewTokensKernel<kF32>, kThreads, kFewTokensSharedMax) !=
        cudaSuccess)
      return 0;
    return blocks;
  }();
  return perSm;
}

/// The few-tokens kernel on its blocks: every 16-row tile its own block
/// where they fit at once, else as many as fit.
template <bool kF32>
cudaError_t launchFewTokens(const Operands &o, __nv_bfloat16 *y, float *yF32,
                            int smCount, cudaStream_t stream) {
  const int perSm = fewTokensBlocksPerSm<kF32>();
  if (perSm == 0)
    return cudaErrorInvalidValue;
  const int blocks = std::min(o.n / 16, perSm * smCount);
  return launchOverlapped(fp8FewTokensKernel<kF32>, dim3(blocks), kThreads,
                          fewTokensSharedBytes(o.m, o.k), stream, o, y, yF32);
}

} // namespace

bool melt::rt::cuda::fp8FewTokensFit(int m, int n, int k) {
  return m >= 1 && m <= kFp8FewTokensMax && n >= 16 && n % 16 == 0 &&
         k >= kKBlock && k % kKBlock == 0 &&
         fewTokensSharedBytes(m, k) <= kFewTokensSharedMax;
}

bool melt::rt::cuda::fp8FewTokensPay(int m, int n, int k) {
  // From the H200's figures (melt-bench-decode-kernels, melt-bench-gemm):
  // up to about 24 MB of weights one pass wins (mini's products of 2-23 MB
  // at 1-8 tokens 1.1-2x, V3's 15 MB ones 1.2x at one token); from 38 MB on
  // the split-K kernel's many blocks keep more loads in flight (V3's 38-132
  // MB products 1.3-1.7x faster there); and a warp staging more than two
  // batches of (token, K block) pairs of x loses what the pass saves (mini's
  // 10944-wide down projection from two tokens on). The F32 form's decision
  // is the FP8 form's: the same kernel for the same shape, the same sums.
  // MELT_CUDA_FP8_FEW_TOKENS=0: the split-K kernel for every token count.
  static const bool enabled = envSwitch("MELT_CUDA_FP8_FEW_TOKENS", true);
  const long kBlocksPerWarp = (k / kKBlock + kWarps - 1) / kWarps;
  return enabled && fp8FewTokensFit(m, n, k) &&
         double(n) * k <= kFewTokensWeightMax &&
         m * kBlocksPerWarp <= 2 * kQuantizeBatch &&
         fewTokensBlocksPerSm<false>() > 0;
}

cudaError_t melt::rt::cuda::fp8FewTokens(const __nv_fp8_e4m3 *x,
                                         const float *xScales,
                                         const __nv_fp8_e4m3 *w,
                                         const float *wScales, __nv_bfloat16 *y,
                                         int m, int n, int k, int smCount,
                                         cudaStream_t stream) {
  if (!fp8FewTokensFit(m, n, k))
    return cudaErrorInvalidValue;
  const Operands o{
      reinterpret_cast<const uint8_t *>(x), xScales, nullptr, nullptr, k,
      reinterpret_cast<const uint8_t *>(w), wScales, m,       n,       k};
  return launchFewTokens<false>(o, y, nullptr, smCount, stream);
}

cudaError_t melt::rt::cuda::fp8FewTokensFromF32(const float *x, const float *up,
                                                int kIn, const __nv_fp8_e4m3 *w,
                                                const float *wScales, float *y,
                                                int m, int n, int k,
                                                int smCount,
                                                cudaStream_t stream) {
  if (!fp8FewTokensFit(m, n, k) || reinterpret_cast<uintptr_t>(x) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(up) % 16 != 0 || kIn < 4 || kIn > k ||
      kIn % 4 != 0)
    return cudaErrorInvalidValue;
  const Operands o{
      nullptr, nullptr, x, up, kIn, reinterpret_cast<const uint8_t *>(w),
      wScales, m,       n, k};
  return launchFewTokens<true>(o, nullptr, y, smCount, stream);
}
