//===- ModelKernels.h - the model's F32 kernels (CUDA) ----------*- C++ -*-===//
//
// The CUDA forms of the model's gather, rotary, routing, paged cache,
// attention, MLA, MoE and FP8 block kernels, with the semantics of
// Device.h and KernelParams.h: rotary frequencies come from the host
// (ropeInverseFrequencies, in double), and the experts of a token are
// chosen exactly as routeToken chooses them (ties to the lower index).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_MODELKERNELS_H
#define MELT_RUNTIME_CUDA_MODELKERNELS_H

#include "cuda/Elementwise.h"

#include <cuda_bf16.h>

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

/// The most experts, groups and choices routeExperts takes (a thread per
/// expert in one block).
constexpr int kMaxRouterExperts = 1024, kMaxRouterGroups = 64,
              kMaxRouterTopK = 64;
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

/// A batch's paged caches (CacheLayout of Device.h), device pointers:
/// position p of sequence b is row pages[b * perSequence + p / 16] * 16 +
/// p % 16 of a cache of `rows` rows.
struct PagedLayout {
  const int32_t *positions, *sequences, *pages, *lengths;
  int perSequence, batch, rows;
};
constexpr int kPageRows = 64;

/// Writes first [tokens, a] then second [tokens, b] into the cache row of
/// each token (width a + b; CacheT float or __nv_bfloat16, rounded to
/// nearest); a position without a page sets *bad to 1 and is skipped.
template <typename CacheT>
cudaError_t cacheAppend(const float *first, const float *second,
                        const PagedLayout &layout, int tokens, int a, int b,
                        CacheT *cache, int32_t *bad, cudaStream_t stream);

/// Device::appendLatent: each token's cache row (width latentCols +
/// ropeDim) from its latent [tokens, latentCols] RMS-normalized (rmsNorm's
/// arithmetic) and its key [tokens, ropeDim] rotated at positions[t]
/// (rope's), a block per token; a position without a page sets *bad to 1
/// and is skipped. CacheT: float or __nv_bfloat16.
template <typename CacheT>
cudaError_t appendLatent(Operand latent, Operand gamma, float eps,
                         int latentCols, Operand key, const int32_t *positions,
                         int ropeDim, bool interleaved,
                         const RopeFrequencies &freqs, double mscale,
                         const PagedLayout &layout, int tokens, CacheT *cache,
                         int32_t *bad, cudaStream_t stream);

/// Beyond this many tokens mlaF32 reads the cache a warp per row.
constexpr int kMlaWarpPerRowTokens = 64;

/// Absorbed MLA over paged F32 latent caches, a block per (token, head);
/// `maxVisible` bounds the positions (it sizes shared memory). A position
/// without a page sets *bad.
cudaError_t mlaF32(const float *qNope, const float *qRope, const float *cache,
                   const PagedLayout &layout, const float *wUk,
                   const float *wUv, int tokens, int heads, int nope, int rope,
                   int latent, int valueDim, int maxVisible, float scale,
                   float *out, int32_t *bad, cudaStream_t stream);
/// Bytes of shared memory mlaF32 (and attentionF32) need.
size_t mlaF32SharedBytes(int latent, int maxVisible);

/// Attention over paged F32 per-head caches (rows: keys [kvHeads, keyDim]
/// then values [kvHeads, valueDim]), a block per (token, head).
cudaError_t attentionF32(const float *q, const float *cache,
                         const PagedLayout &layout, int tokens, int heads,
                         int kvHeads, int keyDim, int valueDim, bool causal,
                         int maxVisible, float scale, float *out, int32_t *bad,
                         cudaStream_t stream);

/// FP8 e4m3 in 1 x block tiles of x [tokens, cols]: scales [tokens,
/// ceil(cols / block)] = max(amax, 1e-12) / 448; and back.
cudaError_t quantizeBlocks(const float *x, int tokens, int cols, int block,
                           uint8_t *q, float *scales, cudaStream_t stream);
cudaError_t dequantizeBlocks(const uint8_t *q, const float *scales, int tokens,
                             int cols, int block, float *y,
                             cudaStream_t stream);

/// An FP8 matrix [rows, cols] with a scale per 128x128 block ([ceil(rows /
/// 128), ceil(cols / 128)]) widened to BF16: e4m3 value x scale, rounded.
cudaError_t widenFp8Blocks(const uint8_t *q, const float *scales, int rows,
                           int cols, __nv_bfloat16 *y, cudaStream_t stream);

/// Routed experts a row at a time (few tokens): the SwiGLU activations of
/// every (token, choice) into `scratch` ([tokens * choices, inter]), a warp
/// per row of gate/up, then the down projection a warp per output, summed
/// into y (zeroed first) with atomics, or where `pairRows` ([tokens *
/// choices, dim]) is given, written there and summed in choice order (the
/// same bits every run: PairOutput, ExpertPairs.cuh). `gateUpTogether`: a
/// warp's gate and up rows' loads in flight at once, and a shared expert's
/// rows asked into L2 before the kernel waits for the one ahead (the same
/// sums; one memory round trip where two rows one after the other take
/// two); `downPairs`: a warp's two outputs' down rows likewise. Weights F32
/// or
/// (`bf16Weights`) BF16, when x and the activations are rounded to BF16
/// before each product. An expert id out of range sets *bad.
///
/// With `shared` (BF16 weights only), y also adds, after the routed sum,
/// each token's shared expert as its BF16 linears and SiLU-mul compute it
/// (the executor's shared-expert fusion, SharedExpertFusions.h): x rounded
/// to BF16, gate and up rounded to BF16 where `roundGateUp`, silu(gate) *
/// up rounded to BF16 as the down product reads it, the output rounded
/// where `roundDown`: one more pair per token in the same two launches.
/// `scratch` then holds tokens x (choices + 1) x max(inter, shared->inter)
/// floats and `pairRows`, where given, tokens x (choices + 1) rows.
struct SharedRowsExpert {
  const void *gate = nullptr, *up = nullptr, *down = nullptr;
  int inter = 0;
  bool roundGateUp = false, roundDown = false;
};
///
/// With `route`, the call routes its tokens itself: each block of the
/// gate/up kernel runs routeExperts' arithmetic on its token's logits (the
/// same choices and weights, bit for bit) and takes its pair's expert from
/// it, and the first block of each pair writes the pair's expert id and
/// weight to route->indices and route->weights (`indices` and `weights`
/// must be those), where the down kernel and the combine read them: the
/// route's own launch, and the wait for it, are off the step's path.
/// Needs at most kRouteInExpertsMax experts (a thread of a block each) and
/// routeExperts' limits on groups and choices.
constexpr int kRouteInExpertsMax = 256;
struct RouteInExperts {
  const float *logits = nullptr, *bias = nullptr;
  RouterConfig config{};
};
cudaError_t moeExpertsRowwise(const float *x, const int32_t *indices,
                              const float *weights, const void *gate,
                              const void *up, const void *down,
                              bool bf16Weights, int tokens, int choices,
                              int experts, int inter, int dim, bool combineBf16,
                              float *scratch, float *y, int32_t *bad,
                              cudaStream_t stream, float *pairRows = nullptr,
                              const SharedRowsExpert *shared = nullptr,
                              bool gateUpTogether = true, bool downPairs = true,
                              const RouteInExperts *route = nullptr);
/// Whether moeExpertsRowwise's `route` takes `experts` experts routed as
/// `config` says.
bool routesInExpertsFit(int experts, const RouterConfig &config);
/// Around the expert kernels that hand their outputs to a PairOutput{y,
/// pairRows} (ExpertPairs.cuh): before them y zeroed where they add into it
/// (no pairRows); after them, where pairRows is given, y[t] = the sum of
/// t's pairs' rows of it in choice order, the pairs whose expert id is out
/// of range left out, then row t of `sharedRows` where given (a shared
/// expert's outputs).
cudaError_t startPairOutput(float *y, const float *pairRows, int tokens,
                            int dim, cudaStream_t stream);
cudaError_t finishPairOutput(float *y, const float *pairRows,
                             const int32_t *indices, int tokens, int choices,
                             int experts, int dim, cudaStream_t stream,
                             const float *sharedRows = nullptr);

/// y[r] = x[rows[r]] for r < count (x and y each F32 or BF16): tokens
/// gathered by expert for the grouped GEMMs. Where `rowsUsed` (one value
/// on the device) is given, rows at or past it are left unwritten (the
/// padding past the last group, which no product reads).
cudaError_t gatherRows(Operand x, const int32_t *rows, int count, int dim,
                       Result y, cudaStream_t stream,
                       const int32_t *rowsUsed = nullptr);
/// y[t] = sum_k weights[t, k] * expertOut[rowOfPair[t * choices + k]]
/// (each expert row rounded to BF16 first with `combineBf16`; rows held in
/// BF16 already are exact), then + plus[t] where `plus` ([tokens, dim],
/// BF16 or F32: a shared expert's output) is given, as add() of the two
/// would.
cudaError_t combineExpertRows(Operand expertOut, const int32_t *rowOfPair,
                              const float *weights, int tokens, int choices,
                              int dim, bool combineBf16, float *y,
                              cudaStream_t stream,
                              Operand plus = {nullptr, false});

/// ids[r] = the index of the largest of logits[r, 0..vocab), the first on
/// ties, NaNs passed over (all NaN: vocab - 1): Greedy.h's greedyIndex.
/// Each row is read in parts by blocks of their own, then their candidates
/// compared: `scratch` holds argmaxScratchWords 4-byte words.
size_t argmaxScratchWords(int rows, int vocab);
cudaError_t argmaxRows(const float *logits, int rows, int vocab, int32_t *ids,
                       void *scratch, cudaStream_t stream);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_MODELKERNELS_H
