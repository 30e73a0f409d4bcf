//===- ModelKernels.h - embedding, RoPE and routing (CUDA) ------*- C++ -*-===//
//
// The CUDA forms of the model's gather, rotary and routing kernels, with the
// semantics of KernelParams.h: rotary frequencies come from the host
// (ropeInverseFrequencies, in double), and the experts of a token are
// chosen exactly as routeToken chooses them (ties to the lower index).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_MODELKERNELS_H
#define MELT_RUNTIME_CUDA_MODELKERNELS_H

#include "cuda/Elementwise.h"

#include <cstdint>

namespace melt::rt::cuda {

/// y[t] = table[ids[t]]; an id outside [0, vocab) sets *badId (device
/// memory, one int32 the caller zeroed) to 1 and writes zeros.
cudaError_t embedding(const int32_t *ids, int tokens, Operand table, int vocab,
                      int hidden, Result y, int32_t *badId,
                      cudaStream_t stream);

constexpr int kMaxRopePairs = 256;
struct RopeFrequencies {
  double inverse[kMaxRopePairs];
};
/// x is [tokens, rows, dim] (rows 1 for [T, D]).
cudaError_t rope(Operand x, const int32_t *positions, int tokens, int rows,
                 int dim, bool interleaved, const RopeFrequencies &freqs,
                 double mscale, Result y, cudaStream_t stream);

constexpr int kMaxRouterExperts = 1024;
struct RouterConfig {
  bool sigmoid;
  int method; // 0 greedy, 1 group_limited_greedy, 2 noaux_tc
  int topK, nGroup, topkGroup;
  bool normalize;
  double scale;
};
cudaError_t routeExperts(const float *logits, const float *bias, int tokens,
                         int experts, const RouterConfig &config,
                         int32_t *indices, float *weights, cudaStream_t stream);

/// Writes latent rows [tokens, latentDim] and RoPE keys [tokens, ropeDim]
/// into cache rows `positions` (width latentDim + ropeDim); a position past
/// `capacity` sets *bad to 1 and is skipped.
cudaError_t latentCacheAppend(const float *latent, const float *ropeKey,
                              const int32_t *positions, int tokens,
                              int latentDim, int ropeDim, int capacity,
                              float *cache, int32_t *bad, cudaStream_t stream);

/// Absorbed MLA of one sequence over an F32 cache, a block per (token,
/// head); `maxVisible` bounds the positions (it sizes shared memory).
cudaError_t mlaF32(const float *qNope, const float *qRope, const float *cache,
                   const int32_t *positions, const float *wUk, const float *wUv,
                   int tokens, int heads, int nope, int rope, int latent,
                   int valueDim, int maxVisible, float scale, float *out,
                   cudaStream_t stream);
/// Bytes of shared memory mlaF32 needs.
size_t mlaF32SharedBytes(int latent, int maxVisible);

/// Routed experts in F32: the SwiGLU activations of every (token, choice)
/// into `scratch` ([tokens * choices, inter]), a warp per row of gate/up,
/// then the down projection a warp per output, summed into y (zeroed first)
/// with atomics. An expert id out of range sets *bad.
cudaError_t moeExpertsF32(const float *x, const int32_t *indices,
                          const float *weights, const float *gate,
                          const float *up, const float *down, int tokens,
                          int choices, int experts, int inter, int dim,
                          bool combineBf16, float *scratch, float *y,
                          int32_t *bad, cudaStream_t stream);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_MODELKERNELS_H
