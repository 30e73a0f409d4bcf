//===- SampleRows.h - top-k / top-p sampling on the GPU ---------*- C++ -*-===//
//
// A block per row of logits: the top-k candidates found by a radix select
// over the row (four passes of 8 bits of an order-preserving key), sorted
// by descending logit and ascending index (a bitonic sort of 2048 keys in
// shared memory), their weights in double, then the host's nucleus and draw
// (Sampling.h's pickInNucleus) in one thread: the token sampleToken picks,
// except where a draw falls within a rounding of the device's exp from a
// boundary.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_SAMPLEROWS_H
#define MELT_RUNTIME_CUDA_SAMPLEROWS_H

#include <cuda_runtime.h>

#include <cstdint>

namespace melt::rt::cuda {

/// The largest top_k the kernel takes (the candidates and, at the k-th
/// logit, up to as many ties again fit its shared memory).
constexpr int kSampleMaxTopK = 1024;

/// ids[r] for rows of F32 logits [rows, vocab], 1 <= topK <= kSampleMaxTopK,
/// temperature > 0, draws [rows, 2] (the 64-bit draw, low word first). A
/// row with more ties at its k-th logit than fit gets id -1: the caller
/// samples it on the host.
cudaError_t sampleRowsTopK(const float *logits, int rows, int vocab, int topK,
                           float temperature, float topP,
                           const uint32_t *draws, int32_t *ids,
                           cudaStream_t stream);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_SAMPLEROWS_H
