//===- MoeFp8Rows.h - FP8 expert stacks a row at a time --------*- C++ -*-===//
//
// A decode step of one token multiplies each of its chosen experts' weights
// with one row of x: the step only streams the experts' bytes. Grouping by
// expert (moeExpertsByExpert) gains nothing there: its tensor-core tiles
// read FP8 stacks at 787 GB/s for one token on the H200 (66 us a layer of
// mini; row by row here: 32.8 us, BF16 stacks row by row 36.4 us;
// bench/results/decode_kernels_h200.json). Here as moeExpertsRowwise does
// for BF16: a warp per row of gate and up (both rows' loads in flight
// together, x staged in shared memory once per block), then per two rows
// of down, 16 e4m3 weights per 16-byte load (one 128-wide scale block),
// widened exactly; with moeExpertsByExpert's semantics for FP8 stacks: x
// and the activations rounded to BF16, each block's products summed in F32
// and scaled.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_MOEFP8ROWS_H
#define MELT_RUNTIME_CUDA_MOEFP8ROWS_H

#include "cuda/ModelKernels.h"
#include "cuda/MoeByExpert.h"

#include <cuda_runtime.h>

#include <cstdint>

namespace melt::rt::cuda {

/// A shared expert (DeepSeek's shared_experts: an MLP every token runs)
/// taken into the routed experts' kernels: its gate, up and down FP8
/// linears' weights (128x128 block scales) as a stack of one expert of
/// intermediate size `inter`, each weight's rows `...Stride` bytes apart
/// (K as stored: zero-padded past the hidden size for gate and up, past
/// `inter` for down, where the device pads it; their scales then have a
/// block column for each 128 of it).
struct SharedFp8Expert {
  ExpertStacks stacks;
  int inter = 0;
  int gateUpStride = 0, downStride = 0;
};

/// Whether moeExpertsFp8Rowwise takes the shape: the hidden and
/// intermediate sizes in 16s (whole 16-byte loads).
bool moeFp8RowwiseFits(int inter, int dim);

/// y = sum over the choices of weight x expert(x) for FP8 128x128
/// block-scaled stacks (stacks.type Fp8Blocks); `combineBf16` rounds each
/// expert output to BF16 before it is weighted; `scratch` holds
/// tokens x choices x inter floats; `quantizeX` multiplies
/// dequantize(quantize(x)) in 1 x 128 FP8 blocks (quantizeBlocks and
/// dequantizeBlocks' arithmetic) instead of x. An expert id out of range
/// sets *bad
/// (the pair is skipped). `pairRows` as moeExpertsRowwise's.
///
/// With `shared`, y also adds, after the routed sum, each token's shared
/// expert as its FP8 linears and SiLU-mul compute it (the executor's
/// shared-expert fusion, SharedExpertFusions.h): x and the activations
/// quantized in 1 x 128 blocks as an FP8 linear's input, gate, up and the
/// output rounded to BF16, silu(gate) * up between: one more pair per token
/// in the same two launches. `scratch` then holds tokens x (choices + 1) x
/// max(inter, shared->inter) floats and `pairRows`, where given,
/// tokens x (choices + 1) rows.
///
/// `tiles`: on tensor cores, a block per 16-row tile of a pair's gate and
/// up, then of its down (FP16 mma.sync; the same products summed in
/// another order); else a warp per row on the CUDA cores. `oneWave` (with
/// `tiles`): only the blocks resident at once, each taking tiles in turn
/// (the input staged once a block, a tile's first loads issued before the
/// tile ahead is summed; the default): the same bits.
///
/// `route` (with `tiles` and `oneWave`): the call routes its tokens
/// itself, as moeExpertsRowwise's `route` (ModelKernels.h): each gate/up
/// block routes its token, the first block of each pair writes the pair's
/// choice and weight to `indices` and `weights`.
cudaError_t moeExpertsFp8Rowwise(
    const float *x, const int32_t *indices, const float *weights,
    const ExpertStacks &stacks, int tokens, int choices, int experts, int inter,
    int dim, bool combineBf16, bool quantizeX, float *scratch, float *y,
    int32_t *bad, cudaStream_t stream, float *pairRows = nullptr,
    const SharedFp8Expert *shared = nullptr, bool tiles = true,
    bool oneWave = true, const RouteInExperts *route = nullptr);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_MOEFP8ROWS_H
