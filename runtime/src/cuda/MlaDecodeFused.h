//===- MlaDecodeFused.h - a few tokens' MLA in one kernel -------*- C++ -*-===//
//
// A decode step of a few sequences over a short context spends most of its
// MLA time between three dependent kernels (mlaDecodeStep: W_UK absorbed
// into the queries, the chunk kernel over the latent cache, the chunks
// merged with W_UV applied), each with a handful of work for 132
// multiprocessors. Here the three are one kernel: a cluster of 8 blocks
// per (token, head), which split the latent columns for the products and
// trade pieces through distributed shared memory; for the attention they
// split the latent columns too (the latent slices, the default where
// they fit: each block scores every row over its columns, the cluster
// adds the partial scores) or the cached positions (each block a share of
// the rows over all columns, the cluster merges the partial sums). Each
// block loads its share of W_UK and W_UV into registers before the kernel
// ahead ends (weights, and in the form by positions what the caller
// vouches that kernel does not write: `early` below), so that the two
// products wait on no memory round trip of their own.
//
// The values are those of mlaDecodeStep's arithmetic up to the order of
// its sums: queries rounded to BF16 (latent then rope, the rope rotated
// from the projection with RopeRotation.cuh where given), scores of BF16
// queries and cached rows in F32, the softmax in F32 (the weights
// unrounded), the chunks merged by their maxima, W_UV's product in F32.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_MLADECODEFUSED_H
#define MELT_RUNTIME_CUDA_MLADECODEFUSED_H

#include "cuda/CacheAppendTracker.h"
#include "cuda/MlaSplit.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace melt::rt::cuda {

/// Whether the fused kernel takes the step: latent 512, rope at most 64
/// (even), nope at most 128 (a multiple of 4), value width at most 128,
/// at most kMlaFusedMaxTokens tokens and a table of at most
/// kMlaFusedMaxVisible positions (longer ones want the chunk kernel's
/// split).
constexpr int kMlaFusedMaxTokens = 4, kMlaFusedMaxVisible = 1024;
bool mlaDecodeFusedFits(const MlaSplitShape &shape);

/// mlaDecodeStep's result in one launch (qNope / qRope as there, or the
/// projection's rows with `projected`); out [tokens, heads, valueDim].
/// wUk [heads, nope, latent], wUv [heads, valueDim, latent]. A position
/// without a page is left out of the attention.
///
/// `early` (with `projected` only) says what the caller knows of the kernels
/// just ahead (CacheAppendTracker.h), whose end the blocks otherwise wait
/// for before they read anything but weights. Query: the one kernel ahead
/// is the cache append, which itself waited for everything before it (the
/// query's projection among it): the blocks read, rotate, absorb and
/// gather the query, and look up their rows, before they wait (the scores
/// need the appended row). Cache: the append is in a branch joined before
/// this kernel: the blocks look up their rows (the step's layout was
/// written before its kernels) and ask for them towards L2 (a prefetch,
/// harmless while the append may still write its row), then wait.
///
/// Two forms split a (token, head)'s work over its cluster: by cached
/// positions (each block attends to a share of them over all 576 columns,
/// the cluster then merges the partial sums), or by latent slices (each
/// block attends to every position over its 64 latent and 8 rope columns,
/// the cluster adding the partial scores: rope 64, tables of at most 512
/// positions, no early reads). `form` Chosen takes the latent slices where
/// they fit (MELT_CUDA_MLA_LATENT_SLICES=0: the positions); the others are
/// for tests (LatentSlices where it does not fit: cudaErrorInvalidValue).
enum class MlaFusedForm { Chosen, Positions, LatentSlices };
cudaError_t mlaDecodeFused(const float *qNope, const float *qRope,
                           const __nv_bfloat16 *cache,
                           const PagedLayout &layout, const float *wUk,
                           const float *wUv, const MlaSplitShape &shape,
                           float scale, float *out, cudaStream_t stream,
                           const ProjectedQuery *projected = nullptr,
                           MlaEarlyReads early = MlaEarlyReads::None,
                           MlaFusedForm form = MlaFusedForm::Chosen);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_MLADECODEFUSED_H
