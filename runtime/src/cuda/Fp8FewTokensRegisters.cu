//===- Fp8FewTokensRegisters.cu - few tokens' FP8 products from registers -===//
//
// The few-tokens kernel's products (Fp8FewTokens.cu: y[M, N] = x[M, K]
// W[N, K]^T for M <= 8, FP8 e4m3 with DeepSeek-V3's block scales, one pass,
// no scratch) with the weights loaded straight into registers instead of
// through a ring in shared memory.
//
// The ring (7 items of 2 KB a warp, 112 KB a block) holds a block alone on
// its multiprocessor: 8 warps an SM stream the weights. Here a lane keeps
// its next kDepth items in registers (64 bytes each), loaded as it
// multiplies the one before, so that a block takes only x's codes and the
// tile sums in shared memory and two or more blocks share a
// multiprocessor. The work is the few-tokens kernel's: a block takes 16
// rows of W at a time, its 8 warps splitting K the same way, the blocks
// resident at once taking the tiles in turn; x staged once as FP8 codes;
// the warps' sums added in warp order at a tile's end.
//
// A lane (g, t) loads chunk t (32 bytes) of rows g and g + 8 of a K block
// as two 16-byte loads, as the ring kernel reads it from its ring: the
// same arithmetic in the same order, so that the two give the same bits.
// (Whole 32-byte sectors a load instruction, lane t taking bytes 16 t and
// 64 + 16 t, ran mini's traced FP8 batch-1 step 3 us slower: 593.9 / 593.4
// against 590.5 / 591.0 us; docs/CudaBackend.md, "Session 42".)
//
//===----------------------------------------------------------------------===//
#include "cuda/Fp8SmallM.h"

#include "cuda/DependentLaunch.cuh"
#include "cuda/Fp8FewTokensParts.cuh"
#include "cuda/RowNorm.cuh"

#include <algorithm>
#include <cstdint>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::fewtokens;

namespace {

/// Items a lane has in flight: 3 x 64 bytes, 6 KB a warp (4 spill at the
/// 128 registers that keep two blocks on a multiprocessor).
constexpr int kDepth = 3;

/// The most shared memory a block takes: x's codes and scales for up to 8
/// tokens of K up to 12K (the static tile sums come on top).
constexpr size_t kRegistersSharedMax = 100u << 10;

/// Where a launch's x comes from: FP8 codes and scales, F32 rows
/// (quantized as they are staged), or one row that an RMSNorm (or an add
/// and norm) makes first, in every block (normRow, the norm kernel's
/// arithmetic, into shared memory; block 0 also stores the norm's y and
/// the residual sum), then quantized from there.
enum class Source { Codes, F32, Norm, AddNorm };

/// The normalized row's place in shared memory: after x's codes and
/// scales, 16-byte aligned.
__host__ __device__ size_t normedRowAt(int m, int k) {
  return (stagedXBytes(m, k) + 15) / 16 * 16;
}

template <Source kSource>
__global__ void __launch_bounds__(kThreads, 2)
    fp8FewTokensRegistersKernel(Operands o, RowNormOperands norm,
                                __nv_bfloat16 *y, float *yF32) {
  constexpr bool kF32 = kSource != Source::Codes;
  constexpr bool kNormed =
      kSource == Source::Norm || kSource == Source::AddNorm;
  const int m = o.m, n = o.n, k = o.k;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, t = lane % 4;
  const WarpItems its(n, k, warp);
  const int kBlocks = its.kBlocks, items = its.items;
  // The lane's 32 bytes of a K block: chunk t, as two 16-byte loads.
  const int part = 32 * t;
  auto load = [&](int q, RowFragment &f, float &scale) {
    const int kb = its.kbOf(q);
    if (kb >= kBlocks) // warp-uniform
      return;
    const int row0 = its.tileOf(q) * 16;
    const uint8_t *lo =
        o.w + size_t(row0 + group) * k + size_t(kb) * kKBlock + part;
    const uint8_t *hi = lo + size_t(8) * k;
    f.lo[0] = streamLoad(lo);
    f.lo[1] = streamLoad(lo + 16);
    f.hi[0] = streamLoad(hi);
    f.hi[1] = streamLoad(hi + 16);
    scale = __ldg(o.wScales + size_t(row0 / kRowsPerScale) * kBlocks + kb);
  };

  // Weights are constant: the first items load before the kernel ahead
  // has ended.
  RowFragment ahead[kDepth];
  float aheadScale[kDepth];
#pragma unroll
  for (int u = 0; u < kDepth; ++u)
    if (u < items)
      load(u, ahead[u], aheadScale[u]);
  extern __shared__ __align__(16) uint8_t sharedBytes[];
  uint8_t *xCodes = sharedBytes;
  float *xScales = reinterpret_cast<float *>(xCodes + size_t(m) * k);
  // (Four pairs of x's loads in flight, not eight: the items ahead hold 51
  // registers meanwhile.)
  if constexpr (kNormed) {
    float *normed = reinterpret_cast<float *>(sharedBytes + normedRowAt(m, k));
    const bool first = blockIdx.x == 0;
    const Result sum = first ? norm.sum : Result{nullptr, norm.sum.bf16};
    // (normRow waits for the kernel ahead once its gammas are loaded.)
    normRow<kSource == Source::AddNorm, true>(norm.x, norm.b, sum, norm.gamma,
                                              norm.eps, o.kIn, 0,
                                              [&](int c, float v) {
                                                normed[c] = v;
                                                if (first)
                                                  store(norm.y, c, v);
                                              });
    __syncthreads(); // the whole row, for every warp
    Operands fromRow = o;
    fromRow.xF32 = normed;
    stageWarpX<true, 4, true>(fromRow, its.kbFirst, its.kbEnd(), xCodes,
                              xScales, lane);
  } else {
    awaitPriorKernels();
    stageWarpX<kF32, 4>(o, its.kbFirst, its.kbEnd(), xCodes, xScales, lane);
  }

  __shared__ TileSums sums;
  float result[4] = {0.f, 0.f, 0.f, 0.f};
  for (int base = 0; base < items; base += kDepth) {
#pragma unroll
    for (int u = 0; u < kDepth; ++u) {
      const int q = base + u;
      if (q >= items) // the same for every warp of the block
        break;
      const RowFragment cur = ahead[u];
      const float weightScale = aheadScale[u];
      if (q + kDepth < items)
        load(q + kDepth, ahead[u], aheadScale[u]);
      const int kb = its.kbOf(q);
      if (kb < kBlocks) // warp-uniform
        multiplyItem(cur, weightScale, xCodes, xScales, kb, m, group, t, part,
                     part + 16, result);
      if (its.endsTile(q))
        storeTile<kF32>(result, sums, its.tileParity(q), warp, lane, m, n,
                        its.tileOf(q), y, yF32);
    }
  }
}

/// The dynamic shared memory of a launch: x's codes and scales, and the
/// normalized row where the kernel makes it.
size_t registersSharedBytes(int m, int k, int normedCols) {
  return normedCols > 0 ? normedRowAt(m, k) + size_t(normedCols) * sizeof(float)
                        : stagedXBytes(m, k);
}

/// Blocks of the register kernel resident at once on a multiprocessor,
/// with the most shared memory it may take; 0 where it cannot run.
template <Source kSource> int registersBlocksPerSm() {
  static const int perSm = [] {
    if (cudaFuncSetAttribute(fp8FewTokensRegistersKernel<kSource>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(kRegistersSharedMax)) != cudaSuccess)
      return 0;
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &blocks, fp8FewTokensRegistersKernel<kSource>, kThreads, 0) !=
        cudaSuccess)
      return 0;
    return blocks;
  }();
  return perSm;
}

/// The kernel on its blocks: every 16-row tile its own block where the
/// blocks resident at once (with this launch's shared memory) cover them,
/// else as many as are resident.
template <Source kSource>
cudaError_t launchRegisters(const Operands &o, const RowNormOperands &norm,
                            __nv_bfloat16 *y, float *yF32, int smCount,
                            cudaStream_t stream) {
  if (registersBlocksPerSm<kSource>() == 0)
    return cudaErrorInvalidValue;
  constexpr bool kNormed =
      kSource == Source::Norm || kSource == Source::AddNorm;
  const size_t shared = registersSharedBytes(o.m, o.k, kNormed ? o.kIn : 0);
  int perSm = 0;
  if (cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &perSm, fp8FewTokensRegistersKernel<kSource>, kThreads, shared);
      e != cudaSuccess)
    return e;
  if (perSm == 0)
    return cudaErrorInvalidValue;
  const int blocks = std::min(o.n / 16, perSm * smCount);
  return launchOverlapped(fp8FewTokensRegistersKernel<kSource>, dim3(blocks),
                          kThreads, shared, stream, o, norm, y, yF32);
}

bool aligned16(const void *p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

} // namespace

bool melt::rt::cuda::fp8FewTokensInRegistersFit(int m, int n, int k) {
  return m >= 1 && m <= kFp8FewTokensMax && n >= 16 && n % 16 == 0 &&
         k >= kKBlock && k % kKBlock == 0 &&
         registersSharedBytes(m, k, 0) <= kRegistersSharedMax;
}

bool melt::rt::cuda::fp8FewTokensAfterNormFit(int n, int kIn, int k) {
  return fp8FewTokensInRegistersFit(1, n, k) && kIn >= 4 && kIn <= k &&
         kIn % 4 == 0 && size_t(kIn) * sizeof(float) <= kMaxNormedRowBytes &&
         registersSharedBytes(1, k, kIn) <= kRegistersSharedMax;
}

cudaError_t melt::rt::cuda::fp8FewTokensInRegisters(
    const __nv_fp8_e4m3 *x, const float *xScales, const __nv_fp8_e4m3 *w,
    const float *wScales, __nv_bfloat16 *y, int m, int n, int k, int smCount,
    cudaStream_t stream) {
  if (!fp8FewTokensInRegistersFit(m, n, k))
    return cudaErrorInvalidValue;
  const Operands o{
      reinterpret_cast<const uint8_t *>(x), xScales, nullptr, nullptr, k,
      reinterpret_cast<const uint8_t *>(w), wScales, m,       n,       k};
  return launchRegisters<Source::Codes>(o, RowNormOperands{}, y, nullptr,
                                        smCount, stream);
}

cudaError_t melt::rt::cuda::fp8FewTokensInRegistersFromF32(
    const float *x, const float *up, int kIn, const __nv_fp8_e4m3 *w,
    const float *wScales, float *y, int m, int n, int k, int smCount,
    cudaStream_t stream) {
  if (!fp8FewTokensInRegistersFit(m, n, k) || !aligned16(x) || !aligned16(up) ||
      kIn < 4 || kIn > k || kIn % 4 != 0)
    return cudaErrorInvalidValue;
  const Operands o{
      nullptr, nullptr, x, up, kIn, reinterpret_cast<const uint8_t *>(w),
      wScales, m,       n, k};
  return launchRegisters<Source::F32>(o, RowNormOperands{}, nullptr, y, smCount,
                                      stream);
}

cudaError_t
melt::rt::cuda::fp8FewTokensAfterNorm(const RowNormOperands &norm, int kIn,
                                      const __nv_fp8_e4m3 *w,
                                      const float *wScales, float *y, int n,
                                      int k, int smCount, cudaStream_t stream) {
  if (!fp8FewTokensAfterNormFit(n, kIn, k))
    return cudaErrorInvalidValue;
  const Operands o{nullptr, nullptr, nullptr,
                   nullptr, kIn,     reinterpret_cast<const uint8_t *>(w),
                   wScales, 1,       n,
                   k};
  return norm.b.data ? launchRegisters<Source::AddNorm>(o, norm, nullptr, y,
                                                        smCount, stream)
                     : launchRegisters<Source::Norm>(o, norm, nullptr, y,
                                                     smCount, stream);
}
