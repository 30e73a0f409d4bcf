//===- MoeFp8Rows.cu - FP8 expert stacks a row at a time (CUDA) -----------===//
#include "cuda/MoeFp8Rows.h"

#include "cuda/BlockQuantize.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/E4m3.cuh"
#include "cuda/ExpertPairs.cuh"
#include "cuda/ModelKernels.h"
#include "cuda/WarpReduce.cuh"

#include <cuda_bf16.h>

using namespace melt::rt::cuda;

namespace {

constexpr int kScaleBlock = 128, kPerLoad = 16, kInFlight = 4;
constexpr int kMaxStagedDim = 12288, kDownRowsPerWarp = 2;

__device__ __forceinline__ float roundedToBf16(float v) {
  return __bfloat162float(__float2bfloat16(v));
}

/// sum over 16 weights of one load (one scale block) of x * w, x BF16
/// values already.
__device__ __forceinline__ float dotSixteen(uint4 packed, const float *x) {
  const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float4 v = *reinterpret_cast<const float4 *>(x + 4 * i);
    float w[4];
    e4m3Values(words[i], w);
    sum += v.x * w[0] + v.y * w[1] + v.z * w[2] + v.w * w[3];
  }
  return sum;
}

/// A lane's parts of sum_k x[k] * row[k] * scale(k / 128) over ROWS rows of
/// `len` e4m3 weights each (len in 16s, rows and x 16-byte aligned, x BF16
/// values): the warp's lanes across the rows, kInFlight loads of every row
/// in flight together (gate and up are read at once, not one after the
/// other).
template <int ROWS>
__device__ __forceinline__ void rowDotParts(const uint8_t *const (&rows)[ROWS],
                                            const float *const (&scales)[ROWS],
                                            const float *x, int len, int lane,
                                            float (&sums)[ROWS]) {
  const int loads = len / kPerLoad;
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
    sums[r] = 0.f;
  for (int base = lane; base < loads; base += 32 * kInFlight) {
    uint4 packed[ROWS][kInFlight];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        const int at = base + 32 * u;
        packed[r][u] =
            at < loads ? __ldcs(reinterpret_cast<const uint4 *>(rows[r]) + at)
                       : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int at = base + 32 * u;
      if (at < loads)
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
          sums[r] += dotSixteen(packed[r][u], x + size_t(at) * kPerLoad) *
                     scales[r][at * kPerLoad / kScaleBlock];
    }
  }
}

/// The scales of row `row` of expert e in a stack of rows x cols matrices
/// (128x128 blocks, partial ones at the ends).
__device__ __forceinline__ const float *rowScales(const float *scales, int e,
                                                  int rows, int cols, int row) {
  const int rowBlocks = (rows + kScaleBlock - 1) / kScaleBlock,
            colBlocks = (cols + kScaleBlock - 1) / kScaleBlock;
  return scales + (size_t(e) * rowBlocks + row / kScaleBlock) * colBlocks;
}

/// x's row dequantize(quantize(x)) in 1 x 128 FP8 blocks, rounded to BF16,
/// into `staged`: a warp per block, the quantize kernels' arithmetic
/// (BlockQuantize.cuh) then dequantizeBlocksByFourKernel's (the pair the
/// executor left out).
__device__ __forceinline__ void stageQuantized(const float4 *source, int dim,
                                               float4 *staged) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int b = warp; b < (dim + 127) / 128; b += blockDim.x / 32) {
    const int c = b * 128 + 4 * lane;
    const bool inside = c < dim;
    const float4 v = inside ? source[c / 4] : make_float4(0.f, 0.f, 0.f, 0.f);
    const float scale = warpBlockScale(v);
    auto value = [&](float f) {
      return roundedToBf16(e4m3Value(e4m3Code(f, scale)) * scale);
    };
    if (inside)
      staged[c / 4] =
          make_float4(value(v.x), value(v.y), value(v.z), value(v.w));
  }
}

/// Grid (tokens * choices, inter / 8), 256 threads, dim floats of dynamic
/// shared memory: the block's token row rounded to BF16 once (kQuantize:
/// quantized first), then a warp per row i of gate and up;
/// act = bf16(silu(gate x) * up x).
template <bool kQuantize>
__global__ void __launch_bounds__(256)
    fp8ActivationKernel(const float *x, const int32_t *indices,
                        ExpertStacks stacks, int choices, int experts,
                        int inter, int dim, float *act, int32_t *bad) {
  extern __shared__ float4 staged[];
  awaitPriorKernels();
  const int pair = blockIdx.x, t = pair / choices;
  const int e = expertOfPair(indices, experts, bad);
  if (e < 0)
    return; // the whole block
  float *xt = reinterpret_cast<float *>(staged);
  const float4 *source = reinterpret_cast<const float4 *>(x + size_t(t) * dim);
  if constexpr (kQuantize) {
    stageQuantized(source, dim, staged);
  } else {
    for (int v = threadIdx.x; v < dim / 4; v += blockDim.x) {
      const float4 q = source[v];
      staged[v] = make_float4(roundedToBf16(q.x), roundedToBf16(q.y),
                              roundedToBf16(q.z), roundedToBf16(q.w));
    }
  }
  __syncthreads();
  const int i = blockIdx.y * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (i >= inter)
    return;
  const size_t row = (size_t(e) * inter + i) * dim;
  const uint8_t *const rows[2] = {
      static_cast<const uint8_t *>(stacks.gate) + row,
      static_cast<const uint8_t *>(stacks.up) + row};
  const float *const scales[2] = {
      rowScales(stacks.gateScales, e, inter, dim, i),
      rowScales(stacks.upScales, e, inter, dim, i)};
  float sums[2];
  rowDotParts(rows, scales, xt, dim, lane, sums);
  const float a = warpSum(sums[0]), b = warpSum(sums[1]);
  if (lane == 0)
    act[size_t(pair) * inter + i] = roundedToBf16(a / (1.f + expf(-a)) * b);
}

/// Grid (tokens * choices, dim / (8 x kDownRowsPerWarp)), 256 threads: a
/// warp per kDownRowsPerWarp outputs j of the down projection (their loads
/// in flight together: a row of down is short), added into y weighted.
__global__ void __launch_bounds__(256)
    fp8DownKernel(const float *act, const int32_t *indices,
                  const float *weights, ExpertStacks stacks, int choices,
                  int experts, int inter, int dim, bool combineBf16,
                  PairOutput y) {
  awaitPriorKernels();
  const int pair = blockIdx.x, e = indices[pair];
  const int j0 = (blockIdx.y * 8 + threadIdx.x / 32) * kDownRowsPerWarp,
            lane = threadIdx.x % 32;
  if (e < 0 || e >= experts || j0 >= dim)
    return;
  // dim is a multiple of 16: all kDownRowsPerWarp rows are there.
  const uint8_t *rows[kDownRowsPerWarp];
  const float *scales[kDownRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kDownRowsPerWarp; ++r) {
    rows[r] = static_cast<const uint8_t *>(stacks.down) +
              (size_t(e) * dim + j0 + r) * inter;
    scales[r] = rowScales(stacks.downScales, e, dim, inter, j0 + r);
  }
  // The activations are BF16 values already (fp8ActivationKernel).
  float sums[kDownRowsPerWarp];
  rowDotParts(rows, scales, act + size_t(pair) * inter, inter, lane, sums);
#pragma unroll
  for (int r = 0; r < kDownRowsPerWarp; ++r) {
    float sum = warpSum(sums[r]);
    if (lane == 0) {
      if (combineBf16)
        sum = roundedToBf16(sum);
      y.add(pair, choices, dim, j0 + r, weights[pair] * sum);
    }
  }
}

} // namespace

bool melt::rt::cuda::moeFp8RowwiseFits(int inter, int dim) {
  // x's row in shared memory (within the 48 KiB a launch has by default).
  return inter > 0 && dim > 0 && inter % kPerLoad == 0 &&
         dim % kPerLoad == 0 && dim <= kMaxStagedDim;
}

cudaError_t melt::rt::cuda::moeExpertsFp8Rowwise(
    const float *x, const int32_t *indices, const float *weights,
    const ExpertStacks &stacks, int tokens, int choices, int experts, int inter,
    int dim, bool combineBf16, bool quantizeX, float *scratch, float *y,
    int32_t *bad, cudaStream_t stream, float *pairRows) {
  if (stacks.type != ExpertStacks::Type::Fp8Blocks || !stacks.gateScales ||
      !stacks.upScales || !stacks.downScales || !moeFp8RowwiseFits(inter, dim))
    return cudaErrorInvalidValue;
  cudaError_t e = startPairOutput(y, pairRows, tokens, dim, stream);
  if (e != cudaSuccess || tokens == 0)
    return e;
  const dim3 activations(tokens * choices, (inter + 7) / 8);
  const dim3 outputs(tokens * choices,
                     (dim + 8 * kDownRowsPerWarp - 1) / (8 * kDownRowsPerWarp));
  if ((e = launchOverlapped(
           quantizeX ? fp8ActivationKernel<true> : fp8ActivationKernel<false>,
           activations, 256, size_t(dim) * sizeof(float), stream, x, indices,
           stacks, choices, experts, inter, dim, scratch, bad)) != cudaSuccess)
    return e;
  if ((e = launchOverlapped(fp8DownKernel, outputs, 256, 0, stream, scratch,
                            indices, weights, stacks, choices, experts, inter,
                            dim, combineBf16, PairOutput{y, pairRows})) !=
      cudaSuccess)
    return e;
  return finishPairOutput(y, pairRows, indices, tokens, choices, experts, dim,
                          stream);
}
