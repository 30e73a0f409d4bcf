//===- MlaDecompressed.h - a long prefill's MLA with K and V per head -----===//
//
// Absorbed MLA reads 576-wide latent rows and sums 512-wide latents per
// (query, key) pair; a prefill of many queries a sequence does less work
// with K and V decompressed per head once (K_nope[h] = c W_UK[h]^T, V[h] =
// c W_UV[h]^T over the sequence's cached latents c), then ordinary causal
// attention 192 wide (nope then RoPE key, shared by the heads) and 128
// wide: for mini's 8x1024 prefill about 77 GFLOP a layer against 180.
// melt-fuse-mla's cost model says from how many queries (the MLA op's
// decompressAbove; Device::mla).
//
// K and V are cuBLASLt batched GEMMs over the heads with FP32
// accumulation. The attention then runs in one of two forms. Where the
// attention's precision is BF16 (`bf16Fused`, as melt-compile chose for
// the op) and the widths take it: the latents, W_UK and W_UV rounded to
// BF16, K and V made in BF16 (GemmRunner::bf16Batched) for a group of
// sequences at once (up to kCausalMaxRuns within the scratch budget: one
// gather of their cached rows side by side, two products), then one fused
// kernel on tensor cores for the group (CausalAttention.h: the scores stay
// on the chip). Otherwise all in TF32 (GemmRunner::tf32Batched): the scores
// of a block of queries held whole ([heads, queries, keys] F32, the blocks
// sized to a scratch budget) by a batched GEMM, a causal softmax kernel,
// and a last GEMM for the output.
//
// The host plans the GEMMs: it needs each sequence's tokens, contiguous in
// the step and at consecutive positions (a prefill's), as host arrays.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_MLADECOMPRESSED_H
#define MELT_RUNTIME_CUDA_MLADECOMPRESSED_H

#include "cuda/CausalAttention.h"
#include "cuda/Gemm.h"
#include "cuda/MlaSplit.h"

#include <cstdint>
#include <vector>

namespace melt::rt::cuda {

/// One sequence's queries in a step: tokens [first, first + count), at
/// positions [position, position + count) of sequence `sequence`.
struct DecompressedQueries {
  int sequence = 0, first = 0, count = 0, position = 0;
};

/// The step's sequences as runs of tokens, from the host copies of the
/// layout's sequences and positions; false where a sequence's tokens are
/// not one contiguous run at consecutive positions.
bool decompressedRuns(const std::vector<int32_t> &sequences,
                      const std::vector<int32_t> &positions,
                      std::vector<DecompressedQueries> &runs);

/// Whether the shape takes the decompressed form (latent + rope <= 1024).
bool mlaDecompressedFits(const MlaSplitShape &shape);

/// Whether the attention takes the fused BF16 kernel at this shape.
bool mlaDecompressedFusesBf16(const MlaSplitShape &shape);

/// F32 scratch for these runs (query blocks sized to `budgetFloats` of
/// scores at least 16 queries each; none where fused); with `projected`
/// the queries' rope angles' table too.
size_t mlaDecompressedScratchFloats(
    const MlaSplitShape &shape, const std::vector<DecompressedQueries> &runs,
    size_t budgetFloats, bool bf16Fused, bool projected = false);

/// out [T, heads, valueDim] for the runs' tokens (others untouched). A
/// position without a page sets *bad (its row is zero). `bf16Fused` where
/// mlaDecompressedFusesBf16 (else cudaErrorInvalidValue's message).
/// `projected` (the fused form only; qNope and qRope unread): the queries
/// as the projection leaves them, split and rotated by the attention
/// kernel (their angles computed once per token ahead of it, into the
/// scratch). `codes` (the fused form only): out's FP8 codes as well
/// (CausalOutputCodes). CacheT: float or __nv_bfloat16.
template <typename CacheT>
CudaStatus
mlaDecompressed(GemmRunner &gemm, const float *qNope, const float *qRope,
                const CacheT *cache, const PagedLayout &layout,
                const float *wUk, const float *wUv, const MlaSplitShape &shape,
                const std::vector<DecompressedQueries> &runs, float scale,
                float *scratch, size_t scratchFloats, size_t budgetFloats,
                bool bf16Fused, float *out, int32_t *bad,
                const CausalProjectedQuery *projected = nullptr,
                const CausalOutputCodes *codes = nullptr);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_MLADECOMPRESSED_H
