//===- MlaSplit.h - absorbed MLA, heads together, split over the sequence ===//
//
// Absorbed MLA over paged F32 latent caches (rows: latent then rope) in
// three kernels, so that each reads its data once with enough blocks:
//  1. q_lat[t, h] = q_nope[t, h] W_UK[h]  (blocks over heads and latent
//     columns: W_UK streamed once per 8 tokens);
//  2. per (token, group of 16 heads, chunk of the sequence): scores of the
//     chunk's cached rows against every head of the group (a row read once
//     for all of them), online softmax, the weighted latent rows; the
//     chunk's running max, sum and output go to scratch;
//  3. per (token, head, 32 value columns): the chunks combined, then W_UV.
// The chunks are as many as give every multiprocessor two blocks (one for
// a long prefill); a decode step over a long context is split so. Where
// the blocks would still be few (a decode step of a few tokens over a
// short context), each kernel takes a narrow form: kernel 1 with 8
// threads per latent column, kernel 2 with groups of 4 heads, kernel 3
// with 8 value columns a block.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_MLASPLIT_H
#define MELT_RUNTIME_CUDA_MLASPLIT_H

#include "cuda/Gemm.h"
#include "cuda/ModelKernels.h"

#include <cstddef>

namespace melt::rt::cuda {

struct MlaSplitShape {
  int tokens, heads, nope, rope, latent, valueDim;
  /// Positions a token may see (the page table's capacity).
  int maxVisible;
};

/// Whether the kernels take the shape (latent <= 512, nope <= 256, rows of
/// at most 1024 values).
bool mlaSplitFits(const MlaSplitShape &shape);
/// The chunks for `multiprocessors`, and the F32 scratch they need.
int mlaSplitChunks(const MlaSplitShape &shape, int multiprocessors);
size_t mlaSplitScratchFloats(const MlaSplitShape &shape, int chunks);

/// A position without a page sets *bad (its row is skipped). CacheT: float
/// or __nv_bfloat16 (Device::latentCacheType).
template <typename CacheT>
cudaError_t
mlaSplit(const float *qNope, const float *qRope, const CacheT *cache,
         const PagedLayout &layout, const float *wUk, const float *wUv,
         const MlaSplitShape &shape, int chunks, float scale, float *scratch,
         float *out, int32_t *bad, cudaStream_t stream);

/// The same attention on tensor cores, for the many query rows of a
/// prefill: W_UK and W_UV multiply in TF32 as batched GEMMs over the heads
/// (`gemm`, on its stream); the sequences' cached rows are copied to BF16
/// once, and the query tokens of a sequence attend in groups of 64 / heads
/// (MlaDecode.cu with causal rows: each cached row read once per group,
/// scores and weighted sums in BF16 with FP32 accumulation). Needs latent
/// 512, rope 64 and heads a multiple of 16 (mlaTensorCoresFit),
/// mlaTensorCoreScratchBytes of scratch, and each sequence's tokens at
/// consecutive positions (else *spread is set and the stray tokens' outputs
/// are zero). A position without a page sets *bad.
bool mlaTensorCoresFit(const MlaSplitShape &shape);
size_t mlaTensorCoreScratchBytes(const MlaSplitShape &shape, int sequences,
                                 int smCount);
template <typename CacheT>
CudaStatus
mlaTensorCores(GemmRunner &gemm, const float *qNope, const float *qRope,
               const CacheT *cache, const PagedLayout &layout, const float *wUk,
               const float *wUv, const MlaSplitShape &shape, float scale,
               void *scratch, size_t scratchBytes, float *out, int32_t *bad,
               int32_t *spread, int smCount);

/// A decode step over a paged BF16 latent cache (latent 512, rope 64,
/// heads in 16s; token t the one token of sequence t of `layout`) in three
/// kernels: W_UK absorbed into BF16 queries (latent then rope, as
/// MlaDecode.h reads them), MlaDecode.cu's chunk kernel over the pages
/// (wgmma for heads in 64s, TMA tiles), then the chunks merged with W_UV
/// applied (the combine of mlaSplit). The split is sized by the page
/// table's capacity, so that a recorded step replays at any length it
/// holds. The kernel trusts the table below each sequence's length (the
/// step's own appends check their positions). With `projected`, qNope and
/// qRope are not read: the query comes from the projection.
/// A decode step's query read from the query projection itself
/// (Device::mlaOfQuery): q [T, H, nope + rope] F32 (BF16 where bf16: read
/// as the F32 of its values), q_nope the first nope values of each (token,
/// head) row, q_rope the last rope values rotated at the token's position
/// with the rope kernel's arithmetic (RopeRotation.cuh: the same bits as the
/// split, the rope and mlaDecodeStep).
struct ProjectedQuery {
  const void *q = nullptr;
  bool bf16 = false;
  const int32_t *positions = nullptr;
  bool interleaved = true;
  RopeFrequencies freqs{};
  double mscale = 1.0;
};
bool mlaDecodeStepFits(const MlaSplitShape &shape);
size_t mlaDecodeStepScratchBytes(const MlaSplitShape &shape,
                                 const PagedLayout &layout, int smCount);
cudaError_t mlaDecodeStep(const float *qNope, const float *qRope,
                          const __nv_bfloat16 *cache, const PagedLayout &layout,
                          const float *wUk, const float *wUv,
                          const MlaSplitShape &shape, float scale,
                          void *scratch, size_t scratchBytes, float *out,
                          int smCount, cudaStream_t stream,
                          const ProjectedQuery *projected = nullptr);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_MLASPLIT_H
