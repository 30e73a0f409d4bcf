//===- MoeByExpert.h - routed experts grouped by expert (CUDA) -*- C++ -*-===//
//
// The routed experts of a decode step of several sequences, with no wait
// for the host (so that it is recorded in the step's CUDA graph): the
// (token, choice) pairs are grouped by expert on the device (one block
// counts, offsets and places them), then each active expert's gate/up rows
// and down rows are streamed once for up to 8 of its tokens at a time
// (an expert with more tokens takes them 8 by 8) and each token's expert
// output is added into y weighted. BF16 and FP8 weights run on tensor
// cores (FP8 widened to BF16 in registers, DeepSeek-V3's block scales
// applied per 128 of K); F32 ones a warp per weight row.
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

/// The stacked weights of the routed experts: gate and up [E, I, D], down
/// [E, D, I], all F32, all BF16, or all FP8 e4m3 with a scale per 128x128
/// block of each expert's matrix ([E, ceil(rows / 128), ceil(cols / 128)]
/// F32; weight = e4m3 value x its block's scale).
struct ExpertStacks {
  enum class Type { F32, BF16, Fp8Blocks };
  Type type = Type::F32;
  const void *gate = nullptr, *up = nullptr, *down = nullptr;
  const float *gateScales = nullptr, *upScales = nullptr,
              *downScales = nullptr;
};

/// Scratch bytes moeExpertsByExpert needs (offsets, pair order, the SwiGLU
/// activations of every pair in F32).
size_t moeByExpertScratchBytes(int tokens, int choices, int experts, int inter);

/// The semantics of moeExpertsRowwise (ModelKernels.h): y = sum over the
/// choices of weight x expert(x), with x and the activations rounded to
/// BF16 where the weights are BF16 or FP8 (FP8 weights: BF16 products
/// summed per 128 of K in F32, then scaled); `combineBf16` rounds each
/// expert output to BF16 before it is weighted. An expert id out of range
/// sets *bad (the pair is skipped). `tensorCores`: BF16 weights whose
/// sizes are multiples of 32 run on mma.sync (moeByExpertTensorCoresFit);
/// FP8 weights always do, and need such sizes (else cudaErrorInvalidValue).
/// `pairRows` ([tokens * choices, dim] F32), where given, makes the sum
/// over the choices the same bits every run (PairOutput, ExpertPairs.cuh).
/// `widePasses`: the tensor-core kernels take an expert's tokens 16 at a
/// time while more than 8 are left (its weights streamed once for 16, not
/// twice), with the same bits (the CUDA device asks for it where the
/// pairs average MELT_CUDA_MOE_WIDE_PASSES_FROM tokens an expert or more).
cudaError_t moeExpertsByExpert(const float *x, const int32_t *indices,
                               const float *weights, const ExpertStacks &stacks,
                               int tokens, int choices, int experts, int inter,
                               int dim, bool combineBf16, bool tensorCores,
                               void *scratch, float *y, int32_t *bad,
                               cudaStream_t stream, float *pairRows = nullptr,
                               bool widePasses = false);

/// Whether the tensor-core kernels take the shape (BF16 or FP8 weights,
/// I and D multiples of 32).
bool moeByExpertTensorCoresFit(ExpertStacks::Type type, int inter, int dim);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_MOEBYEXPERT_H
