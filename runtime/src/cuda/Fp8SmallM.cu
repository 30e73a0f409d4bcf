//===- Fp8SmallM.cu - FP8 block-scaled GEMM for few tokens (CUDA) ---------===//
//
// y[M, N] = x[M, K] W[N, K]^T for M <= 64 (decode), FP8 e4m3 operands with
// DeepSeek-V3 block scales, written for weight bandwidth: at small M the
// GEMM only streams W, and cuBLASLt's block-scaled kernels reach a quarter
// of the copy bandwidth there (and have no algorithm at M = 1).
//
// A thread block owns 128 rows of W (one row of 128x128 weight-scale
// blocks) and a range of K (split-K, so that small N still fills the GPU).
// Each of its 8 warps owns 16 rows and every token: per 128-wide K block it
// issues 4 mma.sync.m16n8k32 (e4m3) per 8 tokens into a temporary FP32
// accumulator, which it then adds to the result times the block's weight
// scale and each token's input scale (FP32 promotion per 128 values, as
// DeepSeek-V3 does; sm_90 has no FP8 mma.sync in hardware, so ptxas runs
// each as FP16 HMMAs, exact for e4m3 values). Because the sum over a K
// block is order-free, each thread loads 32 contiguous bytes of a row and
// feeds them to the 4 mmas (the same permutation of K for W and x), so
// every load is a 16-byte vector. The next K block's weights are loaded before
// the current one is multiplied. Partial sums of the K ranges go to FP32
// scratch; the block that finishes a row tile last (a counter per tile) adds
// them (eight splits' loads in flight at a time) and rounds to BF16, so that
// one launch does it all (at 15 MB of weights a second launch would cost a
// fifth of the time).
//
// Up to 8 tokens and about 24 MB of weights, fp8FewTokens
// (Fp8FewTokens.cu) takes the product instead: one pass, no split over K
// between blocks, which is what a few MB of weights want. Larger weights
// stay here: their many blocks keep more loads in flight.
//
// fp8SmallMFromF32 (up to 8 tokens: a decode step's projections) takes x
// in F32 and quantizes it in the kernel, 1 x 128 blocks as
// quantizeRowsFp8 does: the four lanes that hold a token's 128 values of a
// K block find their amax with two shuffles. Each warp quantizes the
// block's tokens for itself (128 values per token and K block, from L1),
// so that the quantize and widen launches around the GEMM disappear; y is
// written as F32 (rounded to BF16 first, the unfused path's values). Its x
// rows may be shorter than W's (kIn < K: a weight stored with its K padded
// to 512); the values beyond kIn are zeros. Given `up`, it multiplies
// silu(x) * up: an MLP's SiLU-mul folded into the down projection.
//
//===----------------------------------------------------------------------===//
#include "cuda/Fp8SmallM.h"

#include "cuda/BlockQuantize.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/Silu.cuh"
#include "cuda/VectorLoads.cuh"

#include <algorithm>
#include <cstdint>

using namespace melt::rt::cuda;

namespace {

constexpr int kRowsPerBlock = 128, kWarps = 8, kKBlock = 128;
constexpr int kTailLoads = 8;

struct WeightFragment {
  uint4 lo[2], hi[2]; // rows r and r + 8: 32 bytes each
};

__device__ __forceinline__ void loadWeights(const uint8_t *w, size_t k, int row,
                                            int kb, int t, bool valid,
                                            WeightFragment &f) {
  if (!valid) {
    f.lo[0] = f.lo[1] = f.hi[0] = f.hi[1] = make_uint4(0, 0, 0, 0);
    return;
  }
  const uint8_t *p = w + size_t(row) * k + size_t(kb) * kKBlock + t * 32;
  const uint4 *lo = reinterpret_cast<const uint4 *>(p);
  const uint4 *hi = reinterpret_cast<const uint4 *>(p + 8 * k);
  f.lo[0] = __ldcs(lo);
  f.lo[1] = __ldcs(lo + 1);
  f.hi[0] = __ldcs(hi);
  f.hi[1] = __ldcs(hi + 1);
}

__device__ __forceinline__ void mma(float (&d)[4], uint32_t a0, uint32_t a1,
                                    uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/// Quantizes token `group`'s values [32 t, 32 t + 32) of a 128-value K
/// block of F32 x (1 x 128 blocks, quantizeRowsFp8's arithmetic): the 32
/// e4m3 bytes in `codes`, and the block's scale (the same in the token's
/// four lanes). `present` of the 32 are in x (a multiple of 4; zeros
/// beyond). Where `up` is given the values are silu(x) * up (the MLP's
/// SiLU-mul folded in). All lanes of the warp take part (shuffles).
__device__ __forceinline__ float quantizeLaneSlice(const float *x,
                                                   const float *up, int present,
                                                   uint4 (&codes)[2]) {
  float v[32];
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    float4 q = 4 * i < present ? __ldg(reinterpret_cast<const float4 *>(x) + i)
                               : make_float4(0.f, 0.f, 0.f, 0.f);
    if (up && 4 * i < present) {
      const float4 u = __ldg(reinterpret_cast<const float4 *>(up) + i);
      q = make_float4(siluTimes(q.x, u.x), siluTimes(q.y, u.y),
                      siluTimes(q.z, u.z), siluTimes(q.w, u.w));
    }
    v[4 * i] = q.x, v[4 * i + 1] = q.y, v[4 * i + 2] = q.z, v[4 * i + 3] = q.w;
    amax = fmaxf(amax, fmaxf(fmaxf(fabsf(q.x), fabsf(q.y)),
                             fmaxf(fabsf(q.z), fabsf(q.w))));
  }
  // Lanes 4 g .. 4 g + 3 hold token g's block.
  amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
  amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
  const float scale = gemmInputScale(amax), inv = 1.f / scale;
  uint32_t words[8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
    words[i] =
        gemmInputCodes(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3], inv);
  codes[0] = make_uint4(words[0], words[1], words[2], words[3]);
  codes[1] = make_uint4(words[4], words[5], words[6], words[7]);
  return scale;
}

/// TILES: 8-token column tiles (M <= 8 * TILES). kF32 (TILES 1): x is F32
/// [M, kIn] (xF32, times silu(xF32) where upF32 is given; kIn <= K, a
/// multiple of 4), quantized here, and y F32 (yF32).
template <int TILES, bool kF32 = false>
__global__ void __launch_bounds__(kWarps * 32)
    fp8SmallMKernel(const uint8_t *x, const float *xScales, const float *xF32,
                    const float *upF32, int kIn, const uint8_t *w,
                    const float *wScales, float *partials,
                    unsigned *tileCounters, __nv_bfloat16 *y, float *yF32,
                    int m, int n, int k, int kBlocksPerSplit) {
  static_assert(!kF32 || TILES == 1, "in-kernel quantization: 8 tokens");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, t = lane % 4;
  const int tile = blockIdx.x, split = blockIdx.y;
  const int kBlocks = k / kKBlock;
  const int kbBegin = split * kBlocksPerSplit;
  const int kbEnd = min(kBlocks, kbBegin + kBlocksPerSplit);
  const int rowBase = tile * kRowsPerBlock + warp * 16;
  const bool rowsValid = rowBase < n; // n is a multiple of 16
  const int row = rowBase + group;
  const float *wScaleRow = wScales + size_t(tile) * kBlocks;

  float result[TILES][4];
#pragma unroll
  for (int j = 0; j < TILES; ++j)
    result[j][0] = result[j][1] = result[j][2] = result[j][3] = 0.f;

  // Weights are constant: the block's rows of its K range head for L2 and
  // its first K block is loaded before the kernel ahead has ended.
  const int tileRows = min(kRowsPerBlock, n - tile * kRowsPerBlock);
  if (int(threadIdx.x) < tileRows && kbBegin < kbEnd &&
      size_t(n) * k <= kPrefetchBudget)
    prefetchToL2(w + size_t(tile * kRowsPerBlock + threadIdx.x) * k +
                     size_t(kbBegin) * kKBlock,
                 uint32_t(kbEnd - kbBegin) * kKBlock);
  WeightFragment next;
  loadWeights(w, k, row, kbBegin, t, rowsValid && kbBegin < kbEnd, next);
  awaitPriorKernels();
  for (int kb = kbBegin; kb < kbEnd; ++kb) {
    WeightFragment cur = next;
    if (kb + 1 < kbEnd)
      loadWeights(w, k, row, kb + 1, t, rowsValid, next);
    const float weightScale = wScaleRow[kb];
#pragma unroll
    for (int j = 0; j < TILES; ++j) {
      const int token = j * 8 + group;
      uint4 xin[2] = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};
      float tokenScale = 0.f;
      if constexpr (kF32) {
        const int column = kb * kKBlock + t * 32;
        const size_t at = size_t(token) * kIn + column;
        tokenScale = quantizeLaneSlice(
            xF32 + at, upF32 ? upF32 + at : nullptr,
            token < m ? min(32, max(0, kIn - column)) : 0, xin);
      } else if (token < m) {
        const uint4 *p = reinterpret_cast<const uint4 *>(
            x + size_t(token) * k + size_t(kb) * kKBlock + t * 32);
        xin[0] = __ldg(p);
        xin[1] = __ldg(p + 1);
      }
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int s = 0; s < 4; ++s)
        mma(acc, wordOf(cur.lo, 2 * s), wordOf(cur.hi, 2 * s),
            wordOf(cur.lo, 2 * s + 1), wordOf(cur.hi, 2 * s + 1),
            wordOf(xin, 2 * s), wordOf(xin, 2 * s + 1));
      // C fragment: rows group and group + 8, tokens t * 2 and t * 2 + 1.
      const int c0 = j * 8 + t * 2;
      float s0, s1;
      if constexpr (kF32) {
        // Token c's scale is in lane 4 c (all lanes shuffle).
        const float a = __shfl_sync(0xffffffffu, tokenScale, (c0 % 8) * 4),
                    b = __shfl_sync(0xffffffffu, tokenScale, (c0 % 8 + 1) * 4);
        s0 = c0 < m ? a : 0.f;
        s1 = c0 + 1 < m ? b : 0.f;
      } else {
        s0 = c0 < m ? xScales[size_t(kb) * m + c0] : 0.f;
        s1 = c0 + 1 < m ? xScales[size_t(kb) * m + c0 + 1] : 0.f;
      }
      result[j][0] += acc[0] * weightScale * s0;
      result[j][1] += acc[1] * weightScale * s1;
      result[j][2] += acc[2] * weightScale * s0;
      result[j][3] += acc[3] * weightScale * s1;
    }
  }
  const int splits = gridDim.y;
  if (rowsValid) {
    float *out = partials + size_t(split) * m * n;
#pragma unroll
    for (int j = 0; j < TILES; ++j) {
      const int c0 = j * 8 + t * 2;
      for (int c = 0; c < 2; ++c) {
        if (c0 + c >= m)
          continue;
        out[size_t(c0 + c) * n + row] = result[j][c];
        out[size_t(c0 + c) * n + row + 8] = result[j][2 + c];
      }
    }
  }
  // The last block of this row tile adds the splits' partial sums.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned done = atomicAdd(&tileCounters[tile], 1u);
    last = done == unsigned(splits - 1);
    if (last)
      tileCounters[tile] = 0; // ready for the next launch
  }
  __syncthreads();
  if (!last)
    return;
  __threadfence();
  const int rows = min(kRowsPerBlock, n - tile * kRowsPerBlock);
  const size_t splitStride = size_t(m) * n;
  for (int i = threadIdx.x; i < rows * m; i += blockDim.x) {
    const int token = i / rows, r = tile * kRowsPerBlock + i % rows;
    // kTailLoads partial sums (in L2) loaded at once, not one after the
    // other: the tail is a few L2 round trips instead of one per split.
    const float *column = partials + size_t(token) * n + r;
    float part[kTailLoads];
#pragma unroll
    for (int q = 0; q < kTailLoads; ++q)
      part[q] = 0.f;
    for (int p = 0; p < splits; p += kTailLoads) {
#pragma unroll
      for (int q = 0; q < kTailLoads; ++q)
        if (p + q < splits)
          part[q] += __ldcg(column + size_t(p + q) * splitStride);
    }
    float sum = 0.f;
#pragma unroll
    for (int q = 0; q < kTailLoads; ++q)
      sum += part[q];
    const __nv_bfloat16 rounded = __float2bfloat16(sum);
    if constexpr (kF32)
      yF32[size_t(token) * n + r] = __bfloat162float(rounded);
    else
      y[size_t(token) * n + r] = rounded;
  }
}

struct Split {
  int kBlocksPerSplit, splits;
};

Split planSplit(int m, int n, int k, int smCount, size_t workspaceBytes) {
  const int tiles = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  const int kBlocks = k / kKBlock;
  // About two waves of blocks, within the scratch for partial sums.
  int wanted = std::max(1, (2 * smCount + tiles - 1) / tiles);
  size_t perSplit = size_t(m) * n * sizeof(float);
  int affordable = int(std::max<size_t>(1, workspaceBytes / perSplit));
  int splits = std::min({wanted, kBlocks, affordable});
  int perSplitBlocks = (kBlocks + splits - 1) / splits;
  return {perSplitBlocks, (kBlocks + perSplitBlocks - 1) / perSplitBlocks};
}

} // namespace

size_t melt::rt::cuda::fp8SmallMWorkspaceBytes(int m, int n, int k,
                                               int smCount) {
  Split s = planSplit(m, n, k, smCount, size_t(-1) / 2);
  return kFp8SmallMCounterBytes + size_t(s.splits) * m * n * sizeof(float);
}

namespace {

/// A launch's grid, split and workspace parts, after the checks both entry
/// points share.
struct Launch {
  dim3 grid;
  int kBlocksPerSplit = 0;
  unsigned *counters = nullptr;
  float *partials = nullptr;
};

cudaError_t planLaunch(int m, int maxM, int n, int k, void *workspace,
                       size_t workspaceBytes, int smCount, Launch &launch) {
  if (m < 1 || m > maxM || n < 16 || n % 16 || k < kKBlock || k % kKBlock)
    return cudaErrorInvalidValue;
  const int tiles = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  if (tiles * sizeof(unsigned) > kFp8SmallMCounterBytes ||
      workspaceBytes < kFp8SmallMCounterBytes + size_t(m) * n * sizeof(float))
    return cudaErrorInvalidValue;
  Split s =
      planSplit(m, n, k, smCount, workspaceBytes - kFp8SmallMCounterBytes);
  launch.grid = dim3(tiles, s.splits);
  launch.kBlocksPerSplit = s.kBlocksPerSplit;
  launch.counters = static_cast<unsigned *>(workspace);
  launch.partials = reinterpret_cast<float *>(static_cast<char *>(workspace) +
                                              kFp8SmallMCounterBytes);
  return cudaSuccess;
}

} // namespace

cudaError_t melt::rt::cuda::fp8SmallM(
    const __nv_fp8_e4m3 *x, const float *xScales, const __nv_fp8_e4m3 *w,
    const float *wScales, __nv_bfloat16 *y, int m, int n, int k,
    void *workspace, size_t workspaceBytes, int smCount, cudaStream_t stream) {
  if (fp8FewTokensPay(m, n, k))
    return fp8FewTokens(x, xScales, w, wScales, y, m, n, k, smCount, stream);
  Launch l;
  if (cudaError_t e = planLaunch(m, kFp8SmallMMax, n, k, workspace,
                                 workspaceBytes, smCount, l);
      e != cudaSuccess)
    return e;
  auto *xb = reinterpret_cast<const uint8_t *>(x);
  auto *wb = reinterpret_cast<const uint8_t *>(w);
  const int tokenTiles = (m + 7) / 8;
  if (tokenTiles <= 1)
    return launchOverlapped(fp8SmallMKernel<1>, l.grid, kWarps * 32, 0, stream,
                            xb, xScales, nullptr, nullptr, 0, wb, wScales,
                            l.partials, l.counters, y, nullptr, m, n, k,
                            l.kBlocksPerSplit);
  else if (tokenTiles <= 2)
    return launchOverlapped(fp8SmallMKernel<2>, l.grid, kWarps * 32, 0, stream,
                            xb, xScales, nullptr, nullptr, 0, wb, wScales,
                            l.partials, l.counters, y, nullptr, m, n, k,
                            l.kBlocksPerSplit);
  else if (tokenTiles <= 4)
    return launchOverlapped(fp8SmallMKernel<4>, l.grid, kWarps * 32, 0, stream,
                            xb, xScales, nullptr, nullptr, 0, wb, wScales,
                            l.partials, l.counters, y, nullptr, m, n, k,
                            l.kBlocksPerSplit);
  else
    return launchOverlapped(fp8SmallMKernel<8>, l.grid, kWarps * 32, 0, stream,
                            xb, xScales, nullptr, nullptr, 0, wb, wScales,
                            l.partials, l.counters, y, nullptr, m, n, k,
                            l.kBlocksPerSplit);
}

cudaError_t melt::rt::cuda::fp8SmallMFromF32(
    const float *x, const float *up, int kIn, const __nv_fp8_e4m3 *w,
    const float *wScales, float *y, int m, int n, int k, void *workspace,
    size_t workspaceBytes, int smCount, cudaStream_t stream) {
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(up) % 16 != 0 || kIn < 4 || kIn > k ||
      kIn % 4 != 0)
    return cudaErrorInvalidValue;
  if (fp8FewTokensPay(m, n, k))
    return fp8FewTokensFromF32(x, up, kIn, w, wScales, y, m, n, k, smCount,
                               stream);
  Launch l;
  if (cudaError_t e = planLaunch(m, kFp8SmallMFromF32Max, n, k, workspace,
                                 workspaceBytes, smCount, l);
      e != cudaSuccess)
    return e;
  return launchOverlapped(
      fp8SmallMKernel<1, true>, l.grid, kWarps * 32, 0, stream, nullptr,
      nullptr, x, up, kIn, reinterpret_cast<const uint8_t *>(w), wScales,
      l.partials, l.counters, nullptr, y, m, n, k, l.kBlocksPerSplit);
}
