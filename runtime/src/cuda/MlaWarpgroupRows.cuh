//===- MlaWarpgroupRows.cuh - warpgroup MLA decode rows --------*- CUDA -*-===//
//
// What the two warpgroup MLA decode kernels (MlaDecodeWarpgroups.cu,
// MlaDecodeSeesaw.cu) do alike with a thread's two rows (heads) of the
// wgmma fragments (Wgmma.cuh: rows 16 warp + g and + 8, lane = 4 g + t):
// the tokens each row sees, the scaled and masked scores and their row
// maxima, the softmax weights of a tile's scores, and the
// chunk's unnormalized sums and statistics at the end.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_MLAWARPGROUPROWS_CUH
#define MELT_RUNTIME_CUDA_MLAWARPGROUPROWS_CUH

#include "cuda/Exp2.cuh"
#include "cuda/MlaDecode.h"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/Wgmma.cuh"

#include <cfloat>

namespace melt::rt::cuda {

/// The tokens rows `rows` (of heads head0 + ...) of entry `seq` see: the
/// chunk's `end`, or less where the rows have lengths of their own (a
/// prefill's causal rows).
__device__ __forceinline__ void mlaRowEnds(const MlaDecodeArgs &args, int seq,
                                           int head0, int end,
                                           const int (&rows)[2],
                                           int (&rowEnd)[2]) {
  rowEnd[0] = rowEnd[1] = end;
  if (!args.rowLengths)
    return;
  const int perEntry = args.heads / args.rowHeads;
  for (int i = 0; i < 2; ++i)
    rowEnd[i] = min(end, args.rowLengths[size_t(seq) * perEntry +
                                         (head0 + rows[i]) / args.rowHeads]);
}

/// A thread's fragment of a tile's scores (N / 2 values: columns 8 j + 2 t
/// (+ 1) of its two rows) scaled, or -FLT_MAX for tokens past a row's end
/// (the fragment's first column is token `firstToken`; `allSeen`: no token
/// of the tile is past either row's end); into `tileMax` each row's maximum
/// over the quad's fragments (the four lanes of a row). kScaleInExp: the
/// scores are left unscaled (masked ones -infinity), the maxima scaled
/// (the scale is positive), for storeMlaWeights to scale in its exponent.
template <int N, bool kScaleInExp = false>
__device__ __forceinline__ void
scaleMlaScores(float (&score)[N / 2], int firstToken, bool allSeen,
               const int (&rowEnd)[2], float scale, int t,
               float (&tileMax)[2]) {
  // Unscaled scores mask to -infinity (storeMlaWeights's FMA then gives
  // 0); scaled ones to -FLT_MAX (its test for it gives 0).
  constexpr float kMasked = kScaleInExp ? -INFINITY : -FLT_MAX;
  tileMax[0] = tileMax[1] = kMasked;
  if (allSeen) {
#pragma unroll
    for (int v = 0; v < N / 2; ++v) {
      if constexpr (!kScaleInExp)
        score[v] *= scale;
      tileMax[(v / 2) % 2] = fmaxf(tileMax[(v / 2) % 2], score[v]);
    }
  } else {
#pragma unroll
    for (int v = 0; v < N / 2; ++v) {
      const int r = (v / 2) % 2;
      const int token = firstToken + 8 * (v / 4) + 2 * t + v % 2;
      score[v] = token < rowEnd[r] ? (kScaleInExp ? score[v] : score[v] * scale)
                                   : kMasked;
      tileMax[r] = fmaxf(tileMax[r], score[v]);
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    tileMax[r] = fmaxf(tileMax[r], __shfl_xor_sync(0xffffffff, tileMax[r], 1));
    tileMax[r] = fmaxf(tileMax[r], __shfl_xor_sync(0xffffffff, tileMax[r], 2));
    if constexpr (kScaleInExp)
      tileMax[r] *= scale;
  }
}

/// The BF16 softmax weights exp2(score - rowMax) (0 where a score is
/// -FLT_MAX: a masked token) of a thread's fragment of N / 8 chunks of 8
/// tokens, into 16-byte chunks `firstChunk`.. of rows `rows` of the
/// 128-byte-swizzled [64 x 64] block `weights`; their sums, as rounded
/// (what the products use), added to `sum`. Given `packed` (N / 4 values),
/// the BF16 pairs kept there too, chunk j's row r at 2 j + r: four of them
/// a k16 step are wgmma's A from registers (wgmma64x256RegisterA).
/// kScaleInExp: the scores unscaled (scaleMlaScores<N, true>): the weights
/// exp2(score * scale - rowMax), one FMA in the exponent (-infinity, a
/// masked token, gives 0; rowMax is at least -FLT_MAX).
template <int N, bool kScaleInExp = false>
__device__ __forceinline__ void
storeMlaWeights(const float (&score)[N / 2], const float (&rowMax)[2],
                uint8_t *weights, int firstChunk, const int (&rows)[2], int t,
                float (&sum)[2], uint32_t *packed = nullptr,
                float scale = 1.f) {
#pragma unroll
  for (int j = 0; j < N / 8; ++j)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float p[2];
#pragma unroll
      for (int v = 0; v < 2; ++v) {
        const float x = score[4 * j + 2 * r + v];
        if constexpr (kScaleInExp)
          p[v] = softmaxExp2(fmaf(x, scale, -rowMax[r]));
        else
          p[v] = x == -FLT_MAX ? 0.f : softmaxExp2(x - rowMax[r]);
      }
      const uint32_t pair = packBf16(p[0], p[1]);
      const __nv_bfloat162 rounded =
          *reinterpret_cast<const __nv_bfloat162 *>(&pair);
      sum[r] += __low2float(rounded) + __high2float(rounded);
      *reinterpret_cast<uint32_t *>(
          weights + swizzledOffset(rows[r], firstChunk + j) + 4 * t) = pair;
      if (packed)
        packed[2 * j + r] = pair;
    }
}

/// A warpgroup's [64 x 256] accumulators (m64n256 fragments) into the
/// chunk's unnormalized sums at `out` (row stride kLatentRank).
__device__ __forceinline__ void
storeMlaSums(const float (&acc)[128], float *out, const int (&rows)[2], int t) {
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    const int column = 8 * j + 2 * t;
    *reinterpret_cast<float2 *>(out + rows[0] * kLatentRank + column) =
        make_float2(acc[4 * j], acc[4 * j + 1]);
    *reinterpret_cast<float2 *>(out + rows[1] * kLatentRank + column) =
        make_float2(acc[4 * j + 2], acc[4 * j + 3]);
  }
}

/// A row's statistics as the combine reads them: the base-2 running
/// maximum as a natural-log one (-FLT_MAX kept: no token), and the sum.
__device__ __forceinline__ float2 mlaRowStats(float base2Max, float sum) {
  return make_float2(
      base2Max == -FLT_MAX ? -FLT_MAX : base2Max * 0.6931471805599453f, sum);
}

/// The chunk's row statistics, both warpgroups' weights summed: each
/// thread's sums added over its quad, warpgroup 1's handed to warpgroup 0
/// through `exchange` (64 floats of shared memory no thread reads any more),
/// whose lanes t == 0 write (maximum, sum) of rows `rows` at `stats` (a
/// head's slot each). Every thread of the block calls it: a block barrier.
__device__ __forceinline__ void
storeMlaStatistics(const float (&runningMax)[2], float (&runningSum)[2],
                   float *exchange, float2 *stats, const int (&rows)[2],
                   int group, int t) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    runningSum[r] += __shfl_xor_sync(0xffffffff, runningSum[r], 1);
    runningSum[r] += __shfl_xor_sync(0xffffffff, runningSum[r], 2);
  }
  if (group == 1 && t == 0)
    for (int r = 0; r < 2; ++r)
      exchange[rows[r]] = runningSum[r];
  __syncthreads();
  if (group == 0 && t == 0)
    for (int r = 0; r < 2; ++r)
      stats[rows[r]] =
          mlaRowStats(runningMax[r], runningSum[r] + exchange[rows[r]]);
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_MLAWARPGROUPROWS_CUH
