//===- CausalAttentionParts.cuh - what both causal attention kernels share ===//
//
// A prefill's causal attention has two kernels (CausalAttention.cu on
// mma.sync, CausalAttentionWarpgroups.cu on wgmma): both take their runs as
// a kernel parameter, read the queries as the projection leaves them or
// split (QuerySource), order their blocks the same way (in sets of (run,
// head) groups whose keys fit in L2, the last queries of each set's groups
// first) and write a row's output the same way: F32, or
// its FP8 codes, or BF16 (storeOutputRows).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_CAUSALATTENTIONPARTS_CUH
#define MELT_RUNTIME_CUDA_CAUSALATTENTIONPARTS_CUH

#include "cuda/BlockQuantize.cuh"
#include "cuda/CausalAttention.h"
#include "cuda/Exp2.cuh"
#include "cuda/TensorCoreMma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp8.h>

namespace melt::rt::cuda {

/// A launch's runs (a kernel parameter: no copy to the device).
struct CausalRunList {
  int count = 0, blocks = 0; // runs; query blocks of the longest
  /// How many (run, head) groups' blocks go together (causalBlockAt); 0:
  /// every group's.
  int groupsTogether = 0;
  CausalRunOperands run[kCausalMaxRuns];
};

/// Where a token-head's queries are: its nope part at nope + th *
/// nopeStride, its rope part at rope + th * ropeStride (th = token x heads
/// + head), F32 or (bf16) BF16; the rope part rotated already, or
/// (rotation.positions set) rotated as it is read.
struct QuerySource {
  const void *nope = nullptr, *rope = nullptr;
  int nopeStride = 0, ropeStride = 0;
  bool bf16 = false;
  CausalProjectedQuery rotation;
};

/// Two consecutive query values at element `at` of F32 or (kBf16) BF16
/// rows.
template <bool kBf16>
__device__ __forceinline__ float2 loadQueryPair(const void *rows, size_t at) {
  if constexpr (kBf16)
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(
        static_cast<const __nv_bfloat16 *>(rows) + at));
  else
    return *reinterpret_cast<const float2 *>(static_cast<const float *>(rows) +
                                             at);
}

/// The place of block i in a grid of blocks x heads x runs (blocks: of
/// the longest run). The (run, head) groups go in sets of
/// runs.groupsTogether (the last set may be smaller); within a set, block
/// i takes query block blocks - 1 - i / (the set's groups), so that the
/// blocks of the most keys go first and the shorter fill in behind them,
/// and its group from the rest. A set's keys and values stay in L2 while
/// its blocks read them: with every group in one set, a prefill of 8 x 1024
/// at 16 heads had 84 MB of them read by the first 128 blocks, more than
/// L2 holds, and each later block read its keys from memory again (Nsight
/// Compute, session 45: DRAM 50% busy, about twice the bytes of the
/// queries, keys, values and output).
struct CausalBlockPlace {
  int queryBlock, head, run;
};
__host__ __device__ inline CausalBlockPlace
causalBlockAt(const CausalRunList &runs, int heads, int block) {
  const int groups = heads * runs.count;
  const int together = runs.groupsTogether > 0 && runs.groupsTogether < groups
                           ? runs.groupsTogether
                           : groups;
  const int set = block / (together * runs.blocks);
  const int inSet = block % (together * runs.blocks);
  const int first = set * together;
  const int setGroups = groups - first < together ? groups - first : together;
  const int group = first + inSet % setGroups;
  return {runs.blocks - 1 - inSet / setGroups, group % heads, group / heads};
}

/// This block's place, its run's operands.
struct CausalBlock {
  int queryBlock, head;
  const CausalRunOperands *operands;
};
__device__ __forceinline__ CausalBlock causalBlockOf(const CausalRunList &runs,
                                                     int heads) {
  const CausalBlockPlace at = causalBlockAt(runs, heads, int(blockIdx.x));
  return {at.queryBlock, at.head, &runs.run[at.run]};
}

/// The (run, head) groups a launch's blocks take together so that a set's
/// keys and values (`groupBytes` each, of the longest run) fit in a share
/// of L2 (MELT_CUDA_CAUSAL_L2_SETS=0: every group together, the order
/// before session 51).
int causalGroupsTogether(size_t groupBytes);

/// A row's online-softmax step (the thread's quad holding its scores of a
/// tile): its running maximum moved to include the tile's (maxima over the
/// quad), its sum rescaled; returns the reference the tile's probabilities
/// are taken against (exp2(score - reference)) and sets `correction`, what
/// the row's earlier output is multiplied by. A row that has seen no key
/// yet keeps zero sums (exp2(-inf) = 0).
__device__ __forceinline__ float
advanceRowMax(float tileMax, float &rowMax, float &rowSum, float &correction) {
  float m = tileMax;
  m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
  m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
  const float next = fmaxf(rowMax, m);
  const float reference = next == -INFINITY ? 0.f : next;
  correction = softmaxExp2(rowMax - reference);
  rowMax = next;
  rowSum *= correction;
  return reference;
}

/// A thread's two rows (i[0] = 16-row slab's row g, i[1] = row g + 8 of
/// the run's queries) of head h, from C fragments o (16 n-tiles of 8 of the
/// 128 value columns: o[n][2 half + e] is row i[half], column 8 n + 2 t +
/// e) and the thread's share of the rows' sums (summed over the quad here):
/// out's F32 rows, and where asked their FP8 codes (quantizeRowsFp8's
/// arithmetic, a head's 128 values one block) or their BF16 values. Rows
/// past the run are not written. Every lane of the warp takes part (the
/// quad's shuffles).
__device__ __forceinline__ void
storeOutputRows(const float (&o)[16][4], const float (&rowSum)[2],
                const int (&i)[2], const CausalRun &run, int h, int heads,
                int t, float *out, const CausalOutputCodes &codes) {
  constexpr int kValue = 128, kValueTiles = 16;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = rowSum[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const float norm = sum > 0.f ? 1.f / sum : 0.f;
    // The row's block of 128: its largest magnitude over the quad's four
    // threads (every lane shuffles, rows past the run too).
    float amax = 0.f;
    if (codes.codes) {
#pragma unroll
      for (int n = 0; n < kValueTiles; ++n)
        amax = fmaxf(amax, fmaxf(fabsf(o[n][2 * half] * norm),
                                 fabsf(o[n][2 * half + 1] * norm)));
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    }
    if (i[half] >= run.count)
      continue;
    const size_t at =
        (size_t(run.first + i[half]) * heads + h) * kValue + 2 * t;
    if (out) // (null: only the codes read)
#pragma unroll
      for (int n = 0; n < kValueTiles; ++n)
        *reinterpret_cast<float2 *>(out + at + n * 8) =
            make_float2(o[n][2 * half] * norm, o[n][2 * half + 1] * norm);
    if (codes.codes) {
      // quantizeRowsFp8's arithmetic on the values just written.
      const float s = gemmInputScale(amax), inverse = 1.f / s;
#pragma unroll
      for (int n = 0; n < kValueTiles; ++n) {
        const uint32_t lo = __nv_cvt_float_to_fp8(o[n][2 * half] * norm *
                                                      inverse,
                                                  __NV_SATFINITE, __NV_E4M3),
                       hi = __nv_cvt_float_to_fp8(o[n][2 * half + 1] * norm *
                                                      inverse,
                                                  __NV_SATFINITE, __NV_E4M3);
        *reinterpret_cast<uint16_t *>(codes.codes + at + n * 8) =
            uint16_t(lo | (hi << 8));
      }
      if (t == 0)
        codes.scales[size_t(h) * codes.rows + run.first + i[half]] = s;
    }
    if (codes.bf16)
#pragma unroll
      for (int n = 0; n < kValueTiles; ++n)
        *reinterpret_cast<uint32_t *>(codes.bf16 + at + n * 8) =
            packBf16(o[n][2 * half] * norm, o[n][2 * half + 1] * norm);
  }
}

/// The wgmma kernel's launch (CausalAttentionWarpgroups.cu): `list` built
/// and checked by the caller (blocks of kCausalWarpgroupQueries queries).
constexpr int kCausalWarpgroupQueries = 128;
cudaError_t launchCausalAttentionWarpgroups(const QuerySource &query,
                                            const CausalRunList &list,
                                            int heads, float scaleLog2,
                                            float *out,
                                            const CausalOutputCodes &codes,
                                            cudaStream_t stream);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_CAUSALATTENTIONPARTS_CUH
