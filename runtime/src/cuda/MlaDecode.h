//===- MlaDecode.h - MLA decode over the paged latent cache -----*- C++ -*-===//
//
// Absorbed multi-head latent attention for one decoded token per sequence:
// every head attends over the sequence's latent cache entries (512 latent
// values c_kv then 64 RoPE'd key values k_pe, BF16, kept in pages of
// `pageSize` tokens), and the result is the softmax-weighted sum of the
// c_kv parts. W_UK is already folded into the queries and W_UV is applied
// after, by the caller's GEMMs.
//
// The sequence is split into chunks that separate thread blocks handle (so
// that a small batch still fills the GPU); a second kernel combines the
// chunks through their softmax maxima and sums.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_MLADECODE_H
#define MELT_RUNTIME_CUDA_MLADECODE_H

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace melt::rt::cuda {

constexpr int kLatentRank = 512; // c_kv values per token
constexpr int kRopeDim = 64;     // k_pe values per token
constexpr int kLatentEntry = kLatentRank + kRopeDim;

struct MlaDecodeArgs {
  const __nv_bfloat16 *queries; // [batch, heads, 576]: absorbed q_nope, q_pe
  const __nv_bfloat16 *cache;   // [pages, pageSize, 576]
  const int32_t *blockTable;    // [batch, maxPagesPerSequence]
  const int32_t *lengths;       // [batch] cached tokens per sequence
  __nv_bfloat16 *output;        // [batch, heads, 512]
  /// When set, the output in FP32 here instead of `output`.
  float *outputF32 = nullptr;
  int batch = 0, heads = 0, pageSize = 0, maxPagesPerSequence = 0;
  int maxLength = 0; // the largest of `lengths` (sizes the split)
  float scale = 0;   // softmax scale (YaRN mscale included)
  /// Several query tokens of one sequence as one entry (a prefill's causal
  /// rows): `heads` rows are heads / rowHeads tokens of rowHeads heads
  /// each, and row r of entry b sees the first
  /// rowLengths[b * (heads / rowHeads) + r / rowHeads] cached tokens (0:
  /// none; its output is zero). Null: every row sees lengths[b].
  const int32_t *rowLengths = nullptr;
  int rowHeads = 0;
  /// Heads in 64s on Hopper's warpgroup MMA where they fit
  /// (MlaDecodeWarpgroups.h); false: the warp-MMA kernel (comparisons).
  bool warpgroups = true;
  /// Pages the cache holds (0: not given). Where given, the warpgroup
  /// kernel reads its tiles through a TMA tensor map over them.
  int cachePages = 0;
  /// Chunks a sequence is split into (0: as many as fill one wave of
  /// resident blocks; more: a finer split, for comparisons).
  int chunksPerSequence = 0;
};

/// Bytes of scratch that mlaDecode needs for these arguments.
size_t mlaDecodeWorkspaceBytes(const MlaDecodeArgs &args, int smCount);
/// The chunks mlaDecode splits each sequence into for these arguments.
int mlaDecodeChunkCount(const MlaDecodeArgs &args, int smCount);

/// Launches the decode on `stream`. `heads` must be a multiple of 16 and
/// `pageSize` of 32 (a block reads 32 tokens of one page at a time; the
/// warpgroup kernel, for heads in 64s, 64 where the pages allow);
/// rowHeads, where rows have lengths of their own, a divisor of heads.
cudaError_t mlaDecode(const MlaDecodeArgs &args, void *workspace,
                      size_t workspaceBytes, int smCount, cudaStream_t stream);

/// The chunks of a split sequence, for a caller that merges them itself
/// (the session's decode merges them as it applies W_UV): chunk c of entry
/// b leaves, for head h, slot s = (b * chunks + c) * heads + h, an
/// unnormalized [512] sum at sums + s * 512 (the softmax weights relative
/// to the chunk's own maximum) and (maximum, sum of the weights) at
/// stats[s], natural-log maxima; a chunk with no token leaves
/// (-FLT_MAX, 0).
struct MlaDecodePartials {
  int chunks = 0;
  const float *sums = nullptr;
  const float2 *stats = nullptr;
};

/// mlaDecode without its combine: the chunk kernel alone (`output` and
/// `outputF32` are not written), `partials` in the workspace.
cudaError_t mlaDecodeChunks(const MlaDecodeArgs &args, void *workspace,
                            size_t workspaceBytes, int smCount,
                            cudaStream_t stream, MlaDecodePartials &partials);

/// Whether mlaDecode runs these arguments on the warpgroup kernel, and
/// that kernel's tiles by TMA.
bool mlaDecodeOnWarpgroups(const MlaDecodeArgs &args);
bool mlaDecodeBulkCopies(const MlaDecodeArgs &args);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_MLADECODE_H
