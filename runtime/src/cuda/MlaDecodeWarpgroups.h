//===- MlaDecodeWarpgroups.h - MLA decode on wgmma --------------*- C++ -*-===//
//
// The chunk kernel of mlaDecode (MlaDecode.h) for heads in groups of 64 on
// Hopper's warpgroup MMA: a block takes 64 heads of one sequence over one
// chunk, 64 cached tokens at a time; its two warpgroups each score half of
// a tile's tokens, share the softmax's row maxima and the BF16 weights
// through shared memory, and each sums the values of half of the 512 latent
// columns. It leaves the same partial sums and statistics as the warp-MMA
// kernel, for the same combine.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_MLADECODEWARPGROUPS_H
#define MELT_RUNTIME_CUDA_MLADECODEWARPGROUPS_H

#include "cuda/MlaDecode.h"

#include <cuda.h>

namespace melt::rt::cuda {

/// Cached tokens a block takes at a time (a tile lies in one page).
constexpr int kWarpgroupTileTokens = 64;
/// Heads a block takes.
constexpr int kWarpgroupHeads = 64;

// mlaDecodeOnWarpgroups (MlaDecode.h) is defined here: heads in 64s, pages
// of a multiple of 64 tokens, args.warpgroups (MELT_CUDA_MLA_WGMMA=0:
// never).

/// Dynamic shared memory of one block (one block per multiprocessor).
size_t mlaWarpgroupSharedBytes();

/// The cache as [cachePages * pageSize rows x 576] BF16, read in [boxRows
/// x 64] boxes in the 128-byte swizzle: where args.cachePages is known and
/// the driver's tensor maps are at hand (MELT_CUDA_MLA_BULK_COPY=0: never);
/// false otherwise (the kernels then copy with cp.async).
bool mlaCacheTensorMap(const MlaDecodeArgs &args, int boxRows,
                       CUtensorMap &map);

/// Chunk `c` of sequence b covers tokens [c * chunkTokens, ...) (a multiple
/// of 64); per (sequence, chunk, head) it writes the unnormalized [512]
/// sum to `sums` and (max, sum) to `stats`.
cudaError_t launchMlaWarpgroupChunks(const MlaDecodeArgs &args, int chunkTokens,
                                     int chunks, float *sums, float2 *stats,
                                     cudaStream_t stream);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_MLADECODEWARPGROUPS_H
