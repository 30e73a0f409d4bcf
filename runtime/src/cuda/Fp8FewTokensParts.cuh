//===- Fp8FewTokensParts.cuh - what the few-tokens kernels share -*- CUDA
//-*-===//
//
// The FP8 products of up to 8 tokens in one pass (Fp8FewTokens.cu: the
// weights through a ring in shared memory; Fp8FewTokensRegisters.cu: the
// weights straight into registers) share their operands, x's staging as
// FP8 codes in shared memory, the tensor-core arithmetic of one item (16
// weight rows x one 128-wide K block) and the end of a tile (the warps'
// sums added in a fixed order, rounded to BF16).
//
// The product runs on tensor cores as mma.sync.m16n8k16 with FP16 operands
// and FP32 accumulation: every e4m3 value is exact in FP16, and sm_90 has
// no FP8 mma.sync in hardware. Per K block a warp sums into a temporary
// FP32 accumulator, which it then adds to the result times the block's
// weight scale and each token's input scale (FP32 promotion per 128
// values, as DeepSeek-V3 does). The sum over a K block is order-free:
// lane (g, t) holds 32 bytes of rows g and g + 8 of the block (which 32,
// the kernel's choice) and multiplies bytes 4 s .. 4 s + 3 of them at step
// s by the same bytes of token g's x, a permuted order of K, the same for
// W and x, so that every load is a 16-byte vector.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_FP8FEWTOKENSPARTS_CUH
#define MELT_RUNTIME_CUDA_FP8FEWTOKENSPARTS_CUH

#include "cuda/AsyncCopy.cuh"
#include "cuda/BlockQuantize.cuh"
#include "cuda/E4m3.cuh"
#include "cuda/Silu.cuh"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/VectorLoads.cuh"
#include "cuda/WarpReduce.cuh"

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

namespace melt::rt::cuda::fewtokens {

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

/// One K block of a lane's rows (g and g + 8: 32 bytes each).
struct RowFragment {
  uint4 lo[2], hi[2];
};

/// A warp's items in a launch (a block 16 rows of W at a time, the blocks
/// taking the tiles in turn, its 8 warps splitting K): item q is tile
/// blockIdx.x + (q / perWarp) * gridDim.x, K block kbFirst + q % perWarp.
/// Every warp of a block has the same count of items, and so of tile ends
/// (barriers); a warp idles on the K blocks past kBlocks.
struct WarpItems {
  int kBlocks, perWarp, kbFirst, items;
  __device__ WarpItems(int n, int k, int warp) {
    kBlocks = k / kKBlock;
    const int tiles = n / 16;
    perWarp = (kBlocks + kWarps - 1) / kWarps;
    kbFirst = warp * perWarp;
    const int mine = (tiles - int(blockIdx.x) + int(gridDim.x) - 1) / gridDim.x;
    items = mine * perWarp;
  }
  __device__ int tileOf(int q) const {
    return int(blockIdx.x) + q / perWarp * gridDim.x;
  }
  __device__ int kbOf(int q) const { return kbFirst + q % perWarp; }
  /// The end of this warp's K blocks, for staging its x.
  __device__ int kbEnd() const { return min(kBlocks, kbFirst + perWarp); }
  /// Whether item q is its tile's last.
  __device__ bool endsTile(int q) const { return q % perWarp == perWarp - 1; }
  /// storeTile's buffer for item q's tile (alternating from tile to tile).
  __device__ int tileParity(int q) const { return (q / perWarp) & 1; }
};

/// x as FP8 codes ([K/128][m][128]) and its scales ([K/128][m]): the bytes
/// of shared memory they take.
__host__ __device__ inline size_t stagedXBytes(int m, int k) {
  return size_t(m) * k + size_t(m) * (k / kKBlock) * sizeof(float);
}

/// Pairs of (token, K block) a warp quantizes at once from F32: their
/// loads in flight together.
constexpr int kQuantizeBatch = 8;

/// Warp `warp`'s K blocks [kbBegin, kbEnd) of x into shared memory as
/// codes and scales: copied (from FP8) or quantized with quantizeRowsFp8's
/// arithmetic (from F32: a warp per token and K block, lane l values 4 l ..
/// 4 l + 3, silu(x) * up where up is given; values beyond kIn are zeros).
/// Only this warp reads them: a __syncwarp() after suffices. The FP8 form
/// waits for every copy group of the warp. kBatch pairs' loads are in
/// flight at once (fewer where the caller holds many registers). With
/// kXShared, o.xF32 is in shared memory (a row the block normalized).
template <bool kF32, int kBatch = kQuantizeBatch, bool kXShared = false>
__device__ __forceinline__ void stageWarpX(const Operands &o, int kbBegin,
                                           int kbEnd, uint8_t *codes,
                                           float *scales, int lane) {
  const int m = o.m, count = max(0, kbEnd - kbBegin) * m;
  if constexpr (kF32) {
    for (int first = 0; first < count; first += kBatch) {
      float4 v[kBatch], u[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int pair = first + b, kb = kbBegin + pair / max(m, 1),
                  token = pair % m;
        const int column = kb * kKBlock + lane * 4;
        const bool present = pair < count && column < o.kIn;
        const size_t at = size_t(token) * o.kIn + column;
        const auto *from = reinterpret_cast<const float4 *>(o.xF32 + at);
        if constexpr (kXShared)
          v[b] = present ? *from : make_float4(0.f, 0.f, 0.f, 0.f);
        else
          v[b] = present ? __ldg(from) : make_float4(0.f, 0.f, 0.f, 0.f);
        u[b] = present && o.upF32
                   ? __ldg(reinterpret_cast<const float4 *>(o.upF32 + at))
                   : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
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

/// One item: 16 weight rows (the lane's part in `w`, its rows' scale
/// `weightScale`) times K block kb of every token's staged x (lane (g, t)
/// reads token g's bytes at xByte0 and xByte1 of the block: the same bytes
/// as its part of the weight rows), added into `result` (the C fragment:
/// rows g and g + 8, tokens 2 t and 2 t + 1).
__device__ __forceinline__ void
multiplyItem(const RowFragment &w, float weightScale, const uint8_t *xCodes,
             const float *xScales, int kb, int m, int group, int t, int xByte0,
             int xByte1, float (&result)[4]) {
  uint4 codes[2] = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};
  if (group < m) {
    const uint8_t *row = xCodes + (size_t(kb) * m + group) * kKBlock;
    codes[0] = *reinterpret_cast<const uint4 *>(row + xByte0);
    codes[1] = *reinterpret_cast<const uint4 *>(row + xByte1);
  }
  float s0 = 2 * t < m ? xScales[kb * m + 2 * t] : 0.f;
  float s1 = 2 * t + 1 < m ? xScales[kb * m + 2 * t + 1] : 0.f;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int step = 0; step < kSteps; ++step) {
    const uint32_t l = wordOf(w.lo, step), h = wordOf(w.hi, step),
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

/// The warps' sums of one tile in shared memory, two buffers: one is
/// written again only after every thread has passed the next tile's
/// barrier, and so has read it.
using TileSums = float4[2][kWarps][32];

/// A tile's end (every thread of the block, `parity` alternating from tile
/// to tile): the warps' results added in warp order, rounded to BF16, into
/// rows 16 tile .. 16 tile + 15 of y (or widened into yF32); `result`
/// restarts from zero.
template <bool kF32>
__device__ __forceinline__ void
storeTile(float (&result)[4], TileSums &sums, int parity, int warp, int lane,
          int m, int n, int tile, __nv_bfloat16 *y, float *yF32) {
  auto &tileSums = sums[parity];
  tileSums[warp][lane] =
      make_float4(result[0], result[1], result[2], result[3]);
  result[0] = result[1] = result[2] = result[3] = 0.f;
  __syncthreads();
  const int r = threadIdx.x % 16, token = threadIdx.x / 16;
  if (token < m) { // m <= 8: threads 0 .. 16 m - 1
    // Element (r, token) is in lane (r % 8, token / 2), value
    // (r / 8) * 2 + token % 2.
    const int from = (r % 8) * 4 + token / 2, which = (r / 8) * 2 + token % 2;
    float sum = 0.f;
#pragma unroll
    for (int wi = 0; wi < kWarps; ++wi) {
      const float4 v = tileSums[wi][from];
      sum += which == 0 ? v.x : which == 1 ? v.y : which == 2 ? v.z : v.w;
    }
    const __nv_bfloat16 rounded = __float2bfloat16(sum);
    const size_t at = size_t(token) * n + size_t(tile) * 16 + r;
    if constexpr (kF32)
      yF32[at] = __bfloat162float(rounded);
    else
      y[at] = rounded;
  }
}

} // namespace melt::rt::cuda::fewtokens

#endif // MELT_RUNTIME_CUDA_FP8FEWTOKENSPARTS_CUH
