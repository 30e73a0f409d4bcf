//===- ExpertGrouping.h - expert choices grouped on the GPU -----*- C++ -*-===//
//
// Grouping a prefill's (token, choice) pairs by expert so that each
// expert's rows can be multiplied together (GroupedGemm.h) without the
// host: the router's choices stay on the device, and so do the group
// starts, each pair's row and each row's token. Each expert's group starts
// at a multiple of 128 rows (the grouped product's tile); within a group
// the pairs keep their order (the same rows every run), and padding rows,
// as the rows past the last group up to the capacity, name token 0.
//
// The device runs it for a prefill's experts (MELT_CUDA_DEVICE_GROUPING,
// on by default since it was run on the H200; =0 groups on the host).
//
// Two ways, the same rows: a block per expert walking every pair in order
// (MELT_CUDA_CHUNKED_GROUPING=0: 60 us for mini's 8192 x 6 pairs, 64 blocks
// in a loop of 48 dependent steps, and 18 us to count them in one block),
// or, given a workspace (the default since session 24's run on the H200:
// prefill 8x1024 +1.5%), by chunks: a block per 256 pairs counts its chunk's
// pairs of each expert, one block turns the counts into each chunk's
// offsets and the group starts, and a block per chunk ranks its pairs
// among their expert's (a warp's by a match, the warps' counts added in
// warp order) from its chunk's offset.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_EXPERTGROUPING_H
#define MELT_RUNTIME_CUDA_EXPERTGROUPING_H

#include <cuda_runtime.h>

#include <cstdint>

namespace melt::rt::cuda {

/// Rows each group's start is a multiple of.
constexpr int kExpertGroupRows = 128;
/// The most experts grouping takes.
constexpr int kMaxGroupedExperts = 1024;

struct ExpertGroupingArgs {
  /// [tokens, topK] expert indices, on the device.
  const int32_t *chosen = nullptr;
  int tokens = 0, topK = 0, experts = 0;
  /// Rows of the grouped operand: at least expertGroupingCapacity().
  int capacity = 0;
  /// Outputs on the device: starts [experts + 1], rowOfPair [tokens *
  /// topK], tokenOfRow [capacity].
  int32_t *starts = nullptr, *rowOfPair = nullptr, *tokenOfRow = nullptr;
  /// Where given, [experts]: where each group's pairs end (its start plus
  /// its pairs; the rows from there to the next start are padding).
  int32_t *ends = nullptr;
  /// Set to 1 where an index is outside [0, experts) (its pair gets no
  /// row: rowOfPair -1).
  int32_t *bad = nullptr;
  /// Workspace of expertGroupingWorkspace() values on the device: where
  /// given, the pairs are grouped by chunks of kGroupingChunk (the chunked
  /// kernels below), else by a block per expert walking all the pairs.
  int32_t *chunkOffsets = nullptr;
};

/// The rows that every choice of `pairs` pairs among `experts` fits in.
int expertGroupingCapacity(int pairs, int experts);

/// Pairs a block of the chunked grouping takes.
constexpr int kGroupingChunk = 256;
/// The int32 values of the chunked grouping's workspace (each chunk's count
/// of each expert's pairs, then their offsets).
int expertGroupingWorkspace(int pairs, int experts);

/// Launches the grouping on `stream`.
cudaError_t groupExperts(const ExpertGroupingArgs &args, cudaStream_t stream);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_EXPERTGROUPING_H
