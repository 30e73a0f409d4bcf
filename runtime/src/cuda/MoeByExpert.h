//===- MoeByExpert.h - routed experts grouped by expert (CUDA) -*- C++ -*-===//
//
// The routed experts of a decode step of several sequences, with no wait
// for the host (so that it is recorded in the step's CUDA graph): the
// (token, choice) pairs are grouped by expert on the device (one block
// counts, offsets and places them), then each active expert's gate/up rows
// and down rows are streamed once for up to 8 of its tokens at a time
// (16-byte loads, a warp per weight row; an expert with more tokens takes
// them 8 by 8) and each token's expert output is added into y weighted.
// Row by row (moeExpertsRowwise) every pair reads its expert's weights
// again: 64 sequences of top-6 read 384 experts' worth, not at most 64.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_MOEBYEXPERT_H
#define MELT_RUNTIME_CUDA_MOEBYEXPERT_H

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace melt::rt::cuda {

constexpr int kMoeByExpertMaxExperts = 1024;

/// Scratch bytes moeExpertsByExpert needs (offsets, pair order, the SwiGLU
/// activations of every pair in F32).
size_t moeByExpertScratchBytes(int tokens, int choices, int experts, int inter);

/// The semantics of moeExpertsRowwise (ModelKernels.h): y = sum over the
/// choices of weight x expert(x), weights F32 or (`bf16Weights`) BF16 with
/// x and the activations rounded to BF16; `combineBf16` rounds each expert
/// output to BF16 before it is weighted. An expert id out of range sets
/// *bad (the pair is skipped). `tensorCores`: BF16 weights whose sizes
/// are multiples of 32 run on mma.sync (moeByExpertTensorCoresFit).
cudaError_t
moeExpertsByExpert(const float *x, const int32_t *indices, const float *weights,
                   const void *gate, const void *up, const void *down,
                   bool bf16Weights, int tokens, int choices, int experts,
                   int inter, int dim, bool combineBf16, bool tensorCores,
                   void *scratch, float *y, int32_t *bad, cudaStream_t stream);

/// Whether the tensor-core kernels take the shape.
bool moeByExpertTensorCoresFit(bool bf16Weights, int inter, int dim);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_MOEBYEXPERT_H
