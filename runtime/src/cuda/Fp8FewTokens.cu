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
// The arithmetic (tensor cores, FP32 promotion per K block, lane (g, t)
// taking its 32-byte chunk t of rows g and g + 8) and x's staging are
// Fp8FewTokensParts.cuh's, shared with Fp8FewTokensRegisters.cu.
//
//===----------------------------------------------------------------------===//
#include "cuda/Fp8SmallM.h"

#include "EnvSwitch.h"

#include "cuda/DependentLaunch.cuh"
#include "cuda/Fp8FewTokensParts.cuh"

#include <algorithm>
#include <cstdint>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::fewtokens;

namespace {

/// Items (16 rows x one K block of W, 2 KB) in each warp's ring in shared
/// memory: kFewTokensRing - 1 stream in while one is multiplied.
constexpr int kFewTokensRing = 7;
constexpr size_t kItemBytes = 16 * kKBlock;
constexpr size_t kFewTokensRingBytes = kWarps * kFewTokensRing * kItemBytes;

/// The few-tokens kernel's dynamic shared memory: the warps' weight rings,
/// then all of x as FP8 codes ([K/128][m][128]) and its scales
/// ([K/128][m]).
size_t fewTokensSharedBytes(int m, int k) {
  return kFewTokensRingBytes + stagedXBytes(m, k);
}

/// The most the few-tokens kernel may take (it is alone on its
/// multiprocessor; this leaves room for its static shared memory).
constexpr size_t kFewTokensSharedMax = 218u << 10;

/// Row r's 16-byte chunk c of an item, swizzled: the 8 rows a quarter warp
/// reads (chunks 2 t and 2 t + 1 of rows g) fall on different banks.
__device__ __forceinline__ int itemOffset(int r, int c) {
  return r * kKBlock + ((c ^ (r & 7)) * 16);
}

/// The weight bytes up to which one pass pays (see fp8FewTokensPay).
constexpr double kFewTokensWeightMax = 24e6;

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
  const WarpItems its(n, k, warp);
  const int kBlocks = its.kBlocks, items = its.items;
  extern __shared__ __align__(16) uint8_t sharedBytes[];
  // This warp's ring of items, copied in turn: lane l copies chunks l, l +
  // 32, l + 64 and l + 96 of an item (8 lanes a 128-byte row), and its
  // scale (lane 0, into the ring's scales).
  uint8_t *ring = sharedBytes + size_t(warp) * kFewTokensRing * kItemBytes;
  __shared__ float ringScales[kWarps][kFewTokensRing];
  auto copyItem = [&](int q) {
    const int kb = its.kbOf(q), row0 = its.tileOf(q) * 16,
              slot = q % kFewTokensRing;
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
  stageWarpX<kF32>(o, its.kbFirst, its.kbEnd(), xCodes, xScales, lane);

  __shared__ TileSums sums;
  float result[4] = {0.f, 0.f, 0.f, 0.f};
  for (int q = 0; q < items; ++q) {
    // Item q's copies (the groups after it may still be in flight), shown
    // to the whole warp; the slot refilled next was read by every lane in
    // the last item.
    awaitCopies<kFewTokensRing - 2>();
    __syncwarp();
    if (q + kFewTokensRing - 1 < items)
      copyItem(q + kFewTokensRing - 1);
    else
      commitCopies();
    const int kb = its.kbOf(q);
    if (kb < kBlocks) { // warp-uniform
      const uint8_t *item = ring + (q % kFewTokensRing) * kItemBytes;
      const uint4 *chunks = reinterpret_cast<const uint4 *>(item);
      RowFragment cur;
      cur.lo[0] = chunks[itemOffset(group, 2 * t) / 16];
      cur.lo[1] = chunks[itemOffset(group, 2 * t + 1) / 16];
      cur.hi[0] = chunks[itemOffset(group + 8, 2 * t) / 16];
      cur.hi[1] = chunks[itemOffset(group + 8, 2 * t + 1) / 16];
      // Lane (g, t) holds chunk t (32 bytes) of its rows.
      multiplyItem(cur, ringScales[warp][q % kFewTokensRing], xCodes, xScales,
                   kb, m, group, t, 32 * t, 32 * t + 16, result);
    }
    if (its.endsTile(q))
      storeTile<kF32>(result, sums, its.tileParity(q), warp, lane, m, n,
                      its.tileOf(q), y, yF32);
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

/// Whether the few-tokens products load their weights straight into
/// registers (Fp8FewTokensRegisters.cu) rather than through the ring: at
/// one token, where mini's traced FP8 batch-1 step measured 615.0 / 616.2
/// -> 593.7 / 593.7 us with it (its 27 products 245.1 -> 223.5 us), then
/// 590.5 / 591.0 with the ring's chunk a lane (docs/CudaBackend.md,
/// "Session 42"). From 2 to 8 tokens the two kernels alone are within 10%
/// either way, shape by shape (melt-bench-decode-kernels), and no step was
/// measured: the ring stays.
bool melt::rt::cuda::fp8FewTokensTakeRegisters(int m, int n, int k) {
  static const bool enabled =
      melt::rt::envSwitch("MELT_CUDA_FP8_FEW_TOKENS_REGISTERS", true);
  return enabled && m == 1 && fp8FewTokensInRegistersFit(m, n, k);
}

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
  if (fp8FewTokensTakeRegisters(m, n, k))
    return fp8FewTokensInRegisters(x, xScales, w, wScales, y, m, n, k, smCount,
                                   stream);
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
  if (fp8FewTokensTakeRegisters(m, n, k))
    return fp8FewTokensInRegistersFromF32(x, up, kIn, w, wScales, y, m, n, k,
                                          smCount, stream);
  const Operands o{
      nullptr, nullptr, x, up, kIn, reinterpret_cast<const uint8_t *>(w),
      wScales, m,       n, k};
  return launchFewTokens<true>(o, nullptr, y, smCount, stream);
}
