//===- MlaDecodeSeesaw.h - MLA decode, warpgroups taking turns --*- C++ -*-===//
//
// The warpgroup chunk kernel of mlaDecode (MlaDecodeWarpgroups.h) with its
// two warpgroups on alternate tiles, one's softmax beside the other's
// products (MlaDecodeSeesaw.cu): where the cache's tiles come by TMA.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_MLADECODESEESAW_H
#define MELT_RUNTIME_CUDA_MLADECODESEESAW_H

#include "cuda/MlaDecode.h"

#include <cuda.h>

namespace melt::rt::cuda {

/// Whether the warpgroup kernel's chunks run on this kernel where their
/// tiles come by TMA (MELT_CUDA_MLA_SEESAW=0: never).
bool mlaDecodeSeesaw();

/// launchMlaWarpgroupChunks (MlaDecodeWarpgroups.h) on this kernel, the
/// tiles through `map` ([64 x 64] boxes of the cache, mlaCacheTensorMap).
cudaError_t launchMlaSeesawChunks(const MlaDecodeArgs &args, int chunkTokens,
                                  int chunks, float *sums, float2 *stats,
                                  const CUtensorMap &map, cudaStream_t stream);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_MLADECODESEESAW_H
