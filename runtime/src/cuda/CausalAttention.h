//===- CausalAttention.h - a prefill's causal attention, fused (CUDA) ----===//
//
// softmax(scale q k^T) v for each head of one sequence's run of queries
// (or of several sequences' runs) over per-head keys and values, causal
// (query i at position p + i sees keys 0 .. p + i), in one kernel: the
// scores never leave the chip. A block takes the queries of one head,
// walks the keys 64 at a time up to its last query's position, and keeps
// each row's running maximum and sum (the online softmax); products on
// tensor cores, BF16 operands (queries, keys, probabilities, values
// rounded), FP32 sums. Two kernels (CausalKernel): on wgmma, 128 queries a
// block (CausalAttentionWarpgroups.cu, the default), or on mma.sync, 64
// queries a block, a warp 16 (CausalAttention.cu).
//
// The queries come as MLA's two parts (q_nope [tokens, heads, nope] and
// q_rope [tokens, heads, rope], F32, rounded as they are read); keys
// [heads, keys, nope + rope] and values [heads, keys, valueDim] in BF16,
// 16-byte aligned, copied into shared memory ahead of their use (TMA on
// wgmma, cp.async on mma.sync). The
// widths are compile-time: DeepSeek's 128 + 64 and 128
// (causalAttentionFits).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_CAUSALATTENTION_H
#define MELT_RUNTIME_CUDA_CAUSALATTENTION_H

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace melt::rt::cuda {

/// One sequence's run: queries are tokens [first, first + count) at
/// positions [position, position + count); keys [0, keys) are cached
/// (keys >= position + count).
struct CausalRun {
  int first = 0, count = 0, position = 0, keys = 0;
};

/// A run with its keys ([heads, run.keys, nope + rope]) and values
/// ([heads, run.keys, valueDim]), for a launch of several runs. Where runs
/// share one matrix of keys (values), each at rows of its own, headRows is
/// the rows between a head's keys and the next head's (0: run.keys).
struct CausalRunOperands {
  CausalRun run;
  const __nv_bfloat16 *keys = nullptr, *values = nullptr;
  int headRows = 0;
};

/// Runs one launch takes.
constexpr int kCausalMaxRuns = 32;
/// The rope pairs a query's rotation takes (DeepSeek's rope of 64).
constexpr int kCausalRopePairs = 32;
/// The queries as the query projection leaves them, split and rotated by
/// the kernel as it reads them: q [tokens, heads, nope + rope] F32 (or
/// qBf16: BF16, read as the F32 of its values), the rope part's pairs
/// interleaved (DeepSeek's) and not yet rotated; each token's position; the
/// rope's 32 pairs' inverse frequencies and its output scale. The rope
/// kernel's arithmetic (RopeRotation.cuh): the values of the split's copies
/// and the rope kernel, bit for bit, without their three kernels (mini's
/// 8x1024 prefill: 73 us a layer).
///
/// `ropeRotated`, where given (BF16 queries only): the rope part already
/// rotated, BF16 rows [tokens, heads, rope] (causalRotateQueryRope writes
/// them), read in
/// place of q's rope part and not rotated again: the same bits, since the
/// kernel rounds its rotated values to BF16 as it stages them. Rotated in
/// the attention, each block computes its queries' angles in double
/// precision before its first product, every head's blocks again (session
/// 53: 189 against 153 us for the same attention on queries split and
/// rotated ahead, 8 x 1024 at 16 heads; the angles made once per token into
/// a table the blocks read were slower still, 205 us).
struct CausalProjectedQuery {
  const float *q = nullptr;
  const __nv_bfloat16 *qBf16 = nullptr;
  const int32_t *positions = nullptr;
  double inverse[kCausalRopePairs] = {};
  double mscale = 1.0;
  const __nv_bfloat16 *ropeRotated = nullptr;
};

/// Writes the rope part of `query`'s BF16 rows (qBf16 [tokens, heads, nope
/// + rope]) for tokens [0, tokens) rotated (the rope kernel's arithmetic,
/// one angle a (token, pair) for every head) into `rotated` [tokens, heads,
/// 2 x kCausalRopePairs] BF16: the rows CausalProjectedQuery::ropeRotated
/// names. query.ropeRotated unread.
cudaError_t causalRotateQueryRope(const CausalProjectedQuery &query, int tokens,
                                  int heads, int nope, __nv_bfloat16 *rotated,
                                  cudaStream_t stream);

/// The kernel a launch takes: by default the wgmma kernel
/// (CausalAttentionWarpgroups.cu; MELT_CUDA_CAUSAL_WARPGROUPS=0 the
/// mma.sync one), or the one named (tests and benchmarks run both).
enum class CausalKernel { Default, Warps, Warpgroups };

/// Whether the kernel takes these widths.
bool causalAttentionFits(int nope, int rope, int valueDim);

/// out[first + i, h] (rows of heads x valueDim F32) for the run's queries.
cudaError_t causalAttentionBf16(const float *qNope, const float *qRope,
                                const __nv_bfloat16 *keys,
                                const __nv_bfloat16 *values,
                                const CausalRun &run, int heads, int nope,
                                int rope, int valueDim, float scale, float *out,
                                cudaStream_t stream,
                                CausalKernel kernel = CausalKernel::Default);

/// The output's 1 x 128 FP8 codes as well (a head's value row of 128 is
/// one block), written beside `out` by the kernel that computed it, as
/// quantizeRowsFp8 would write them from `out` ([rows, heads * 128] codes,
/// [heads, rows] scales: block h of row t at h * rows + t), for an FP8
/// output projection to read (MlaProductFusions.h); or `bf16`, the output
/// rounded to BF16 (as out's layout) for a BF16 one. `out` may then be
/// null (the prepared rows alone).
struct CausalOutputCodes {
  uint8_t *codes = nullptr;
  float *scales = nullptr;
  int rows = 0;
  __nv_bfloat16 *bf16 = nullptr;
};

/// The same for up to kCausalMaxRuns runs (a prefill's sequences) in one
/// launch: every run's query blocks in one grid, the blocks of the last
/// queries (the most keys) of every run and head first, so that the
/// shorter ones fill in behind them. `codes`, where given: the output's
/// FP8 codes too.
cudaError_t causalAttentionBf16(const float *qNope, const float *qRope,
                                const CausalRunOperands *runs, int runCount,
                                int heads, int nope, int rope, int valueDim,
                                float scale, float *out, cudaStream_t stream,
                                const CausalOutputCodes *codes = nullptr,
                                CausalKernel kernel = CausalKernel::Default);
/// The same with the queries as the projection leaves them.
cudaError_t causalAttentionBf16(const CausalProjectedQuery &query,
                                const CausalRunOperands *runs, int runCount,
                                int heads, int nope, int rope, int valueDim,
                                float scale, float *out, cudaStream_t stream,
                                const CausalOutputCodes *codes = nullptr,
                                CausalKernel kernel = CausalKernel::Default);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_CAUSALATTENTION_H
