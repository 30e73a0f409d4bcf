//===- MoeFp8Rows.cu - FP8 expert stacks a row at a time (CUDA) -----------===//
#include "cuda/MoeFp8Rows.h"

#include "cuda/BlockQuantize.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/E4m3.cuh"
#include "cuda/ExpertPairs.cuh"
#include "cuda/ModelKernels.h"
#include "cuda/Silu.cuh"
#include "cuda/WarpReduce.cuh"

#include <cuda_bf16.h>

#include <algorithm>

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

/// A row of `dim` F32 values dequantize(quantize(v)) in 1 x 128 FP8 blocks
/// with the FP8 GEMMs' input arithmetic (quantizeRowsFp8: what an FP8
/// linear does to its input), unrounded, into `staged`: a warp per block.
__device__ __forceinline__ void stageGemmInput(const float4 *source, int dim,
                                               float4 *staged) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int b = warp; b < (dim + 127) / 128; b += blockDim.x / 32) {
    const int c = b * 128 + 4 * lane;
    const bool inside = c < dim;
    const float4 v = inside ? source[c / 4] : make_float4(0.f, 0.f, 0.f, 0.f);
    const float scale = gemmInputScale(warpMax(
        fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)))));
    const uint32_t codes = gemmInputCodes(v.x, v.y, v.z, v.w, 1.f / scale);
    float values[4];
    e4m3Values(codes, values);
    if (inside)
      staged[c / 4] = make_float4(values[0] * scale, values[1] * scale,
                                  values[2] * scale, values[3] * scale);
  }
}

/// Where a block's pair is: a routed (token, choice) pair, or with a shared
/// expert, pairs routedPairs .. routedPairs + tokens - 1, token t's shared
/// expert (expert 0 of shared.stacks, weight 1).
struct PairSource {
  bool shared;
  int token, expert, inter;
  ExpertStacks stacks; // (a copy: a kernel parameter's address would put
                       // the parameters in local memory)
  int gateUpStride, downStride; // K as stored
};
__device__ __forceinline__ PairSource
pairSource(const int32_t *indices, const ExpertStacks &stacks, int choices,
           int experts, int inter, int dim, const SharedFp8Expert &shared,
           int routedPairs, int32_t *bad) {
  const int pair = blockIdx.x;
  if (pair >= routedPairs)
    return {true,
            pair - routedPairs,
            0,
            shared.inter,
            shared.stacks,
            shared.gateUpStride,
            shared.downStride};
  return {false, pair / choices, expertOfPair(indices, experts, bad),
          inter, stacks,         dim,
          inter};
}

/// Grid (tokens * choices [+ tokens: the shared expert's pairs], rows /
/// (8 rowsPerWarp)), 256 threads, dim floats of dynamic shared memory: the
/// block's token row rounded to BF16 once (kQuantize: quantized first),
/// then each warp takes rowsPerWarp rows i of gate and up in turn; act =
/// bf16(silu(gate x) * up x). A shared expert's pair does what its FP8
/// linears and SiLU-mul do: x quantized as an FP8 linear's input, gate and
/// up rounded to BF16, act = silu(gate) * up unrounded (its down product
/// quantizes it).
template <bool kQuantize>
__global__ void __launch_bounds__(256)
    fp8ActivationKernel(const float *x, const int32_t *indices,
                        ExpertStacks stacks, int choices, int experts,
                        int inter, int dim, int rowsPerWarp, float *act,
                        int actStride, int32_t *bad, SharedFp8Expert shared,
                        int routedPairs) {
  extern __shared__ float4 staged[];
  awaitPriorKernels();
  const int pair = blockIdx.x;
  const PairSource p = pairSource(indices, stacks, choices, experts, inter, dim,
                                  shared, routedPairs, bad);
  const int e = p.expert;
  if (e < 0)
    return; // the whole block
  float *xt = reinterpret_cast<float *>(staged);
  const float4 *source =
      reinterpret_cast<const float4 *>(x + size_t(p.token) * dim);
  if (p.shared) {
    stageGemmInput(source, dim, staged);
  } else if constexpr (kQuantize) {
    stageQuantized(source, dim, staged);
  } else {
    for (int v = threadIdx.x; v < dim / 4; v += blockDim.x) {
      const float4 q = source[v];
      staged[v] = make_float4(roundedToBf16(q.x), roundedToBf16(q.y),
                              roundedToBf16(q.z), roundedToBf16(q.w));
    }
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const ExpertStacks &w = p.stacks;
  for (int r = 0; r < rowsPerWarp; ++r) {
    const int i = (blockIdx.y * rowsPerWarp + r) * 8 + warp;
    if (i >= p.inter)
      return;
    const size_t row = (size_t(e) * p.inter + i) * p.gateUpStride;
    const uint8_t *const rows[2] = {static_cast<const uint8_t *>(w.gate) + row,
                                    static_cast<const uint8_t *>(w.up) + row};
    const float *const scales[2] = {
        rowScales(w.gateScales, e, p.inter, p.gateUpStride, i),
        rowScales(w.upScales, e, p.inter, p.gateUpStride, i)};
    float sums[2];
    rowDotParts(rows, scales, xt, dim, lane, sums);
    const float a = warpSum(sums[0]), b = warpSum(sums[1]);
    if (lane == 0)
      act[size_t(pair) * actStride + i] =
          p.shared ? siluTimesOfBf16(a, b)
                   : roundedToBf16(a / (1.f + expf(-a)) * b);
  }
}

/// Outputs j0 .. j0 + kDownRowsPerWarp - 1 of a pair (expert e of `w`,
/// rows `stride` bytes apart; `len` activations at `a`, BF16 values or a
/// shared expert's quantized ones) by one warp: each rounded to BF16 where
/// `round`, times `weight`.
__device__ __forceinline__ void downRows(const float *a, float weight,
                                         const ExpertStacks &w, int e, int len,
                                         int stride, int dim, int j0, int lane,
                                         bool round, int pair, int token,
                                         const PairOutput &y) {
  // dim is a multiple of 16: all kDownRowsPerWarp rows are there.
  const uint8_t *rows[kDownRowsPerWarp];
  const float *scales[kDownRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kDownRowsPerWarp; ++r) {
    rows[r] = static_cast<const uint8_t *>(w.down) +
              (size_t(e) * dim + j0 + r) * stride;
    scales[r] = rowScales(w.downScales, e, dim, stride, j0 + r);
  }
  float sums[kDownRowsPerWarp];
  rowDotParts(rows, scales, a, len, lane, sums);
#pragma unroll
  for (int r = 0; r < kDownRowsPerWarp; ++r) {
    float sum = warpSum(sums[r]);
    if (lane == 0) {
      if (round)
        sum = roundedToBf16(sum);
      y.addRow(pair, token, dim, j0 + r, weight * sum);
    }
  }
}

/// Grid (tokens * choices [+ tokens: the shared expert's pairs], dim / (8
/// x kDownRowsPerWarp x rowsPerWarp)), 256 threads: each warp takes
/// rowsPerWarp sets of kDownRowsPerWarp outputs j of the down projection in
/// turn (a set's loads in flight together: a row of down is short), added
/// into y weighted. A shared expert's pair first quantizes its activations
/// as an FP8 linear's input (into shared.inter floats of dynamic shared
/// memory) and rounds its outputs to BF16 (an FP8 linear's), weight 1.
__global__ void __launch_bounds__(256)
    fp8DownKernel(const float *act, const int32_t *indices,
                  const float *weights, ExpertStacks stacks, int choices,
                  int experts, int inter, int dim, int rowsPerWarp,
                  bool combineBf16, PairOutput y, int actStride,
                  SharedFp8Expert shared, int routedPairs) {
  extern __shared__ float4 stagedAct[];
  awaitPriorKernels();
  const int pair = blockIdx.x;
  PairSource p{false, pair / max(choices, 1), 0, inter, stacks, dim, inter};
  if (pair >= routedPairs) {
    p = {true,
         pair - routedPairs,
         0,
         shared.inter,
         shared.stacks,
         shared.gateUpStride,
         shared.downStride};
  } else {
    p.expert = indices[pair];
    if (p.expert < 0 || p.expert >= experts)
      return;
  }
  const float *a = act + size_t(pair) * actStride;
  if (p.shared) {
    stageGemmInput(reinterpret_cast<const float4 *>(a), p.inter, stagedAct);
    __syncthreads();
    a = reinterpret_cast<const float *>(stagedAct);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float weight = p.shared ? 1.f : weights[pair];
  const bool round = p.shared || combineBf16;
  for (int set = 0; set < rowsPerWarp; ++set) {
    const int j0 =
        ((blockIdx.y * rowsPerWarp + set) * 8 + warp) * kDownRowsPerWarp;
    if (j0 >= dim)
      return;
    downRows(a, weight, p.stacks, p.expert, p.inter, p.downStride, dim, j0,
             lane, round, pair, p.token, y);
  }
}

/// Blocks per pair and rows (sets of rows) per warp for a kernel whose
/// blocks take `perBlockRound` rows a round: the fewest rounds per warp for
/// which all the pairs' blocks are resident at once. One wave: a block
/// stages its x once for several rows, and no second wave waits on the
/// first one's slowest block (2.7 waves of one row a warp were a decode
/// step's single largest kernel).
struct Wave {
  int blocksPerPair, rowsPerWarp;
};
template <class Kernel>
Wave waveOf(Kernel kernel, int pairs, int rows, int perBlockRound,
            size_t sharedBytes) {
  static const int multiprocessors = [] {
    int device = 0, count = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount,
                               device) != cudaSuccess)
      return 1;
    return count;
  }();
  int perSm = 1;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, kernel, 256,
                                                    sharedBytes) != cudaSuccess)
    perSm = 1;
  const int rounds = (rows + perBlockRound - 1) / perBlockRound;
  const int resident = std::max(1, std::max(perSm, 1) * multiprocessors);
  const int blocksWanted = std::clamp(resident / std::max(pairs, 1), 1, rounds);
  const int rowsPerWarp = (rounds + blocksWanted - 1) / blocksWanted;
  return {(rounds + rowsPerWarp - 1) / rowsPerWarp, rowsPerWarp};
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
    int32_t *bad, cudaStream_t stream, float *pairRows,
    const SharedFp8Expert *shared) {
  if (stacks.type != ExpertStacks::Type::Fp8Blocks || !stacks.gateScales ||
      !stacks.upScales || !stacks.downScales || !moeFp8RowwiseFits(inter, dim))
    return cudaErrorInvalidValue;
  SharedFp8Expert sharedExpert;
  if (shared) {
    const ExpertStacks &s = shared->stacks;
    if (s.type != ExpertStacks::Type::Fp8Blocks || !s.gateScales ||
        !s.upScales || !s.downScales ||
        !moeFp8RowwiseFits(shared->inter, dim) || shared->gateUpStride < dim ||
        shared->gateUpStride % kPerLoad != 0 ||
        shared->downStride < shared->inter ||
        shared->downStride % kPerLoad != 0)
      return cudaErrorInvalidValue;
    sharedExpert = *shared;
  }
  cudaError_t e = startPairOutput(y, pairRows, tokens, dim, stream);
  if (e != cudaSuccess || tokens == 0)
    return e;
  const int routedPairs = tokens * choices,
            pairs = routedPairs + (shared ? tokens : 0);
  const int rows = std::max(inter, sharedExpert.inter);
  auto activation =
      quantizeX ? fp8ActivationKernel<true> : fp8ActivationKernel<false>;
  const size_t downShared = size_t(sharedExpert.inter) * sizeof(float);
  const Wave up = waveOf(activation, pairs, rows, 8, size_t(dim) * 4);
  const Wave down =
      waveOf(fp8DownKernel, pairs, dim, 8 * kDownRowsPerWarp, downShared);
  if ((e = launchOverlapped(activation, dim3(pairs, up.blocksPerPair), 256,
                            size_t(dim) * sizeof(float), stream, x, indices,
                            stacks, choices, experts, inter, dim,
                            up.rowsPerWarp, scratch, rows, bad, sharedExpert,
                            routedPairs)) != cudaSuccess)
    return e;
  if ((e = launchOverlapped(
           fp8DownKernel, dim3(pairs, down.blocksPerPair), 256, downShared,
           stream, scratch, indices, weights, stacks, choices, experts, inter,
           dim, down.rowsPerWarp, combineBf16, PairOutput{y, pairRows}, rows,
           sharedExpert, routedPairs)) != cudaSuccess)
    return e;
  return finishPairOutput(
      y, pairRows, indices, tokens, choices, experts, dim, stream,
      shared && pairRows ? pairRows + size_t(routedPairs) * dim : nullptr);
}
