//===- MoeFp8Rows.cu - FP8 expert stacks a row at a time (CUDA) -----------===//
#include "cuda/MoeFp8Rows.h"

#include "cuda/BlockQuantize.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/E4m3.cuh"
#include "cuda/ExpertPairs.cuh"
#include "cuda/ModelKernels.h"
#include "cuda/ResidentBlocks.h"
#include "cuda/RouteInBlock.cuh"
#include "cuda/Silu.cuh"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/VectorLoads.cuh"
#include "cuda/WarpReduce.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

using namespace melt::rt::cuda;

namespace {

constexpr int kScaleBlock = 128, kWeightsPerLoad = 16, kInFlight = 4;
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
  const int loads = len / kWeightsPerLoad;
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
          sums[r] +=
              dotSixteen(packed[r][u], x + size_t(at) * kWeightsPerLoad) *
              scales[r][at * kWeightsPerLoad / kScaleBlock];
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
    const float scale = gemmInputScale(warpAbsMax(v));
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
/// The block's pair (blockIdx.x); a routed pair's expert -1 where its index
/// is out of range, flagged in *bad where `bad` is given (the activation
/// kernels; the down kernels after them pass none).
__device__ __forceinline__ PairSource
pairSource(const int32_t *indices, const ExpertStacks &stacks, int choices,
           int experts, int inter, int dim, const SharedFp8Expert &shared,
           int routedPairs, int32_t *bad, bool routed = false) {
  const int pair = blockIdx.x;
  if (pair >= routedPairs)
    return {true,
            pair - routedPairs,
            0,
            shared.inter,
            shared.stacks,
            shared.gateUpStride,
            shared.downStride};
  // (routed: the expert is the caller's to fill in.)
  const int e = routed ? 0
                : bad  ? expertOfPair(indices, experts, bad)
                       : indices[pair];
  return {false, pair / choices, e >= 0 && e < experts ? e : -1, inter, stacks,
          dim,   inter};
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
  const PairSource p = pairSource(indices, stacks, choices, experts, inter, dim,
                                  shared, routedPairs, nullptr);
  if (p.expert < 0)
    return; // the whole block
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

// ---- The same on tensor cores: a block a 16-row tile ----
//
// The row kernels above spend ~53 instructions a lane on 16 weights (each
// e4m3 pair widened to FP16, then to two F32, an FMA each, x from shared
// memory): an H200 ran them at ~2 TB/s, issue-bound with few warps
// eligible (bench/results/moe_fp8_rows_two_in_flight_tried_s29_h200.txt).
// Here a block takes a pair's 16-row tile of gate and up (or of down), its
// 8 warps splitting K in 128-wide blocks, and a warp multiplies with
// mma.sync m16n8k16 on FP16 operands: a conversion per two weights, no
// FMA, the token as column 0 of B. The weights' e4m3 values are exact in
// FP16. So are the inputs, each 128-wide block as FP16 times a multiplier:
// a shared expert's FP8 input codes times their scale; BF16 values times a
// power of two that puts the block's largest magnitude in [2^14, 2^15)
// (BF16 has 8 significant bits: exact down to 2^-31 of the largest, the
// rest's share below F32's rounding of the sum). A block's products are
// summed in F32 by the mma, then added times the weight's block scale and
// the input's multiplier: the row kernels' sums in another order.

constexpr int kTileRows = 16, kTileWarps = 8, kTileSteps = kScaleBlock / 16;

/// A 128-wide block of a row of inputs as FP16 operands: each lane's four
/// values as FP16 pairs, and the block's multiplier (input = FP16 value x
/// multiplier).
struct HalfBlock {
  uint2 halves;
  float multiplier;
};

__device__ __forceinline__ uint32_t halfPair(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t *>(&h);
}

/// BF16 values (four a lane, the warp's 128) times a power of two: the
/// block's largest magnitude to [2^14, 2^15), below FP16's largest finite.
__device__ __forceinline__ HalfBlock scaledHalves(float4 v) {
  const float top = warpAbsMax(v);
  const int exponent =
      min(max(((__float_as_int(top) >> 23) & 0xff) - 127 - 14, -100), 100);
  const float down = __int_as_float((127 - exponent) << 23);
  return {make_uint2(halfPair(v.x * down, v.y * down),
                     halfPair(v.z * down, v.w * down)),
          __int_as_float((127 + exponent) << 23)};
}

/// An FP8 linear's input (quantizeRowsFp8's codes and scale, as
/// stageGemmInput): the codes as FP16, the scale the multiplier.
__device__ __forceinline__ HalfBlock gemmInputHalves(float4 v) {
  const float scale = gemmInputScale(warpAbsMax(v));
  const uint32_t codes = gemmInputCodes(v.x, v.y, v.z, v.w, 1.f / scale);
  return {make_uint2(e4m3PairAsHalves(codes), e4m3PairAsHalves(codes >> 16)),
          scale};
}

/// What a tile kernel does to its input row before the products.
enum class TileInput {
  Bf16,      // rounded to BF16 (x of the routed experts; their activations)
  Quantized, // dequantize(quantize(x)) in 1 x 128 blocks, rounded to BF16
  GemmInput, // an FP8 linear's input (a shared expert's x and activations)
};

/// `len` F32 values at `source` (len in 16s) as FP16 operand blocks in
/// `halves` (zeros to the end of the last 128-wide block) and their
/// multipliers: a warp per block.
__device__ __forceinline__ void stageHalves(const float4 *source, int len,
                                            TileInput input, __half *halves,
                                            float *multipliers) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int b = warp; b < (len + kScaleBlock - 1) / kScaleBlock;
       b += blockDim.x / 32) {
    const int c = b * kScaleBlock + 4 * lane;
    const bool inside = c < len;
    float4 v = inside ? source[c / 4] : make_float4(0.f, 0.f, 0.f, 0.f);
    HalfBlock block;
    if (input == TileInput::GemmInput) {
      block = gemmInputHalves(v);
    } else {
      if (input == TileInput::Quantized) {
        const float scale = warpBlockScale(v);
        auto value = [&](float f) {
          return e4m3Value(e4m3Code(f, scale)) * scale;
        };
        v = make_float4(value(v.x), value(v.y), value(v.z), value(v.w));
      }
      v = make_float4(roundedToBf16(v.x), roundedToBf16(v.y),
                      roundedToBf16(v.z), roundedToBf16(v.w));
      block = scaledHalves(v);
    }
    *reinterpret_cast<uint2 *>(halves + c) =
        inside ? block.halves : make_uint2(0, 0);
    if (lane == 0)
      multipliers[b] = block.multiplier;
  }
}

/// The dynamic shared memory of a tile kernel whose input rows are `len`
/// long: the FP16 blocks, then their multipliers.
size_t tileSharedBytes(int len) {
  const int blocks = (len + kScaleBlock - 1) / kScaleBlock;
  return size_t(blocks) * kScaleBlock * sizeof(__half) +
         size_t(blocks) * sizeof(float);
}

/// Where the multipliers of a row of `len` start, after its FP16 blocks at
/// `halves` (tileSharedBytes' layout).
__device__ __forceinline__ float *tileMultipliers(__half *halves, int len) {
  return reinterpret_cast<float *>(
      halves + size_t((len + kScaleBlock - 1) / kScaleBlock) * kScaleBlock);
}

/// Rows g and g + 8 of a 16-row tile, 32 bytes each at K offset `at`
/// (zeros from `len` on).
struct TileFragment {
  uint4 lo[2], hi[2];
};
__device__ __forceinline__ TileFragment loadTileFragment(const uint8_t *row,
                                                         size_t stride, int at,
                                                         int len) {
  TileFragment f;
  const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const bool in = at + 16 * (i + 1) <= len;
    f.lo[i] = in ? __ldcs(reinterpret_cast<const uint4 *>(row + at) + i) : zero;
    f.hi[i] =
        in ? __ldcs(reinterpret_cast<const uint4 *>(row + 8 * stride + at) + i)
           : zero;
  }
  return f;
}

/// The loads of two 128-wide K blocks of a warp's share of a tile.
template <int kWeights> struct TilePair { TileFragment a[2][kWeights]; };

/// Blocks kb and kb + 1 (those before `end`) of rows[w] into `pair`.
template <int kWeights>
__device__ __forceinline__ void
loadTilePair(TilePair<kWeights> &pair, const uint8_t *const (&rows)[kWeights],
             size_t stride, int kb, int end, int len, int t) {
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int w = 0; w < kWeights; ++w)
      pair.a[j][w] =
          loadTileFragment(rows[w], stride, (kb + j) * kScaleBlock + 32 * t,
                           kb + j < end ? len : 0);
}

/// A warp's share of a tile: kWeights 16-row tiles (rows[w]: the lane's
/// row g; row g + 8 is 8 `stride`s on) times the block's staged input,
/// over the 128-wide K blocks [first, end), two blocks' loads in flight at
/// a time; out[w] as mma's C fragment (column 0: token 0). The first
/// blocks' loads go out before `prepare` (the input's staging, with the
/// block's barrier: every warp calls it), so that they overlap it; where
/// `firstLoaded`, `pair` holds them already (loaded by the caller while it
/// finished the tile before).
template <int kWeights, class Prepare>
__device__ __forceinline__ void
tileProducts(const uint8_t *const (&rows)[kWeights], size_t stride,
             const float *const (&scales)[kWeights], const __half *halves,
             const float *multipliers, int len, int first, int end, int lane,
             Prepare prepare, float (&out)[kWeights][4],
             TilePair<kWeights> &pair, bool firstLoaded = false) {
  const int g = lane / 4, t = lane % 4;
  auto &a = pair.a;
  auto load = [&](int kb) {
    loadTilePair(pair, rows, stride, kb, end, len, t);
  };
  if (first < end && !firstLoaded)
    load(first);
  prepare();
  for (int kb = first; kb < end; kb += 2) {
    if (kb > first)
      load(kb);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      if (kb + j >= end)
        break;
      // Token 0's values of K chunk t (B's column g = 0; the other
      // columns are zero).
      uint4 x[2][2] = {};
      if (g == 0) {
        const uint4 *from = reinterpret_cast<const uint4 *>(
            halves + (kb + j) * kScaleBlock + 32 * t);
#pragma unroll
        for (int i = 0; i < 4; ++i)
          x[i / 2][i % 2] = from[i];
      }
      float acc[kWeights][4] = {};
#pragma unroll
      for (int s = 0; s < kTileSteps; ++s) {
        // Bytes 4s .. 4s + 3 of the chunk: K 2t, 2t + 1 then 2t + 8,
        // 2t + 9 of the step's k16 (the same order for A and B).
        const uint2 b = make_uint2(wordOf(x[s / 4], (2 * s) % 8),
                                   wordOf(x[s / 4], (2 * s) % 8 + 1));
#pragma unroll
        for (int w = 0; w < kWeights; ++w) {
          const uint32_t l = wordOf(a[j][w].lo, s), h = wordOf(a[j][w].hi, s);
          mma16816Half(acc[w], e4m3PairAsHalves(l), e4m3PairAsHalves(h),
                       e4m3PairAsHalves(l >> 16), e4m3PairAsHalves(h >> 16),
                       b.x, b.y);
        }
      }
      const float multiplier = multipliers[kb + j];
#pragma unroll
      for (int w = 0; w < kWeights; ++w) {
        const float scale = scales[w][kb + j] * multiplier;
#pragma unroll
        for (int c = 0; c < 4; ++c)
          out[w][c] += acc[w][c] * scale;
      }
    }
  }
}

/// This warp's 128-wide K blocks of `len`: an even share of the tile's.
__device__ __forceinline__ int2 warpKBlocks(int len, int warp) {
  const int blocks = (len + kScaleBlock - 1) / kScaleBlock,
            per = (blocks + kTileWarps - 1) / kTileWarps;
  return make_int2(min(blocks, warp * per), min(blocks, (warp + 1) * per));
}

/// Row r of the tile's kWeights sums: the warps' parts (column 0 of their
/// C fragments) added in warp order, for threads r < 16. kBuffers 2: the
/// parts of consecutive tiles of a block alternate (`parity`), so that a
/// tile's parts are not written over while the one before is summed.
template <int kWeights, int kBuffers = 1>
__device__ __forceinline__ void tileSums(const float (&out)[kWeights][4],
                                         float (&sums)[kWeights],
                                         int parity = 0) {
  __shared__ float parts[kBuffers][kTileWarps][kWeights][kTileRows];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane % 4 == 0)
#pragma unroll
    for (int w = 0; w < kWeights; ++w) {
      parts[parity][warp][w][lane / 4] = out[w][0];
      parts[parity][warp][w][lane / 4 + 8] = out[w][2];
    }
  __syncthreads();
  if (threadIdx.x < kTileRows)
#pragma unroll
    for (int w = 0; w < kWeights; ++w) {
      float sum = 0.f;
      for (int v = 0; v < kTileWarps; ++v)
        sum += parts[parity][v][w][threadIdx.x];
      sums[w] = sum;
    }
}

/// A lane's rows (g) of a tile of kWeights weights and their scale rows.
template <int kWeights> struct TileRows {
  const uint8_t *rows[kWeights];
  const float *scales[kWeights];
};

/// A block's tiles: tile blockIdx.y (kOneWave false: the grid has one
/// block a tile), or tiles blockIdx.y, + gridDim.y, ... (kOneWave: one
/// wave of blocks; the input staged once, and each tile's first loads
/// issued before the tile ahead is summed and written). rowsOf(tile) names
/// a tile's rows; stage() stages the input (with the block's barrier);
/// finish(tile, out, parity) sums and writes a tile (tileSums with parity
/// for kBuffers 2). The same sums either way.
template <int kWeights, bool kOneWave, class RowsOf, class Stage, class Finish>
__device__ __forceinline__ void
blockTiles(int tiles, RowsOf rowsOf, size_t stride, const __half *halves,
           const float *multipliers, int len, int2 range, int lane, Stage stage,
           Finish finish) {
  TilePair<kWeights> loads;
  if constexpr (!kOneWave) {
    const TileRows<kWeights> r = rowsOf(int(blockIdx.y));
    float out[kWeights][4] = {};
    tileProducts<kWeights>(r.rows, stride, r.scales, halves, multipliers, len,
                           range.x, range.y, lane, stage, out, loads);
    finish(int(blockIdx.y), out, 0);
  } else {
    bool loaded = false;
    for (int tile = blockIdx.y, round = 0; tile < tiles;
         tile += gridDim.y, ++round) {
      const TileRows<kWeights> r = rowsOf(tile);
      float out[kWeights][4] = {};
      tileProducts<kWeights>(
          r.rows, stride, r.scales, halves, multipliers, len, range.x, range.y,
          lane,
          [&] {
            if (round == 0)
              stage();
          },
          out, loads, loaded);
      const int next = tile + gridDim.y;
      loaded = next < tiles && range.x < range.y;
      if (loaded)
        loadTilePair(loads, rowsOf(next).rows, stride, range.x, range.y, len,
                     lane % 4);
      finish(tile, out, round % 2);
    }
  }
}

/// Grid (pairs as fp8ActivationKernel's, rows / 16; kOneWave: fewer, each
/// block taking every gridDim.y-th tile), 256 threads,
/// tileSharedBytes(dim): rows [16 tile, 16 tile + 16) of the pair's gate
/// and up on tensor cores, act as fp8ActivationKernel's.
/// kRoutes (with kOneWave): the block routes its token first
/// (moeExpertsFp8Rowwise's `route`: routeInBlock on the token's logits, as
/// the route kernel would), and the first block of each routed pair writes
/// the pair's choice and weight, which `indices` and `weights` then point
/// to.
template <bool kQuantize, bool kOneWave, bool kRoutes = false>
__global__ void __launch_bounds__(256, kOneWave ? 2 : 0)
    fp8ActivationTileKernel(const float *x, const int32_t *indices,
                            ExpertStacks stacks, int choices, int experts,
                            int inter, int dim, float *act, int actStride,
                            int32_t *bad, SharedFp8Expert shared,
                            int routedPairs, RouteInExperts route,
                            float *weights) {
  extern __shared__ float4 tileShared[];
  awaitPriorKernels();
  const int pair = blockIdx.x;
  PairSource p;
  if constexpr (kRoutes) {
    p = pairSource(nullptr, stacks, choices, experts, inter, dim, shared,
                   routedPairs, nullptr, /*routed=*/true);
    if (!p.shared) { // (block-uniform)
      __shared__ RouteShared<kRouteInExpertsMax> routing;
      routeInBlock(route.logits + size_t(p.token) * experts, route.bias,
                   experts, route.config, routing);
      p.expert = routing.expert[pair % choices];
      if (blockIdx.y == 0 && threadIdx.x == 0) {
        const_cast<int32_t *>(indices)[pair] = p.expert;
        weights[pair] = routing.weight[pair % choices];
      }
    }
  } else {
    p = pairSource(indices, stacks, choices, experts, inter, dim, shared,
                   routedPairs, bad);
  }
  const int e = p.expert, tiles = p.inter / kTileRows;
  if (e < 0 || int(blockIdx.y) >= tiles)
    return; // the whole block
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  auto *halves = reinterpret_cast<__half *>(tileShared);
  float *multipliers = tileMultipliers(halves, dim);
  const ExpertStacks &w = p.stacks;
  auto rowsOf = [&](int tile) {
    const int row0 = tile * kTileRows;
    const size_t row = (size_t(e) * p.inter + row0 + lane / 4) * p.gateUpStride;
    return TileRows<2>{
        {static_cast<const uint8_t *>(w.gate) + row,
         static_cast<const uint8_t *>(w.up) + row},
        {rowScales(w.gateScales, e, p.inter, p.gateUpStride, row0),
         rowScales(w.upScales, e, p.inter, p.gateUpStride, row0)}};
  };
  const TileInput input = p.shared    ? TileInput::GemmInput
                          : kQuantize ? TileInput::Quantized
                                      : TileInput::Bf16;
  blockTiles<2, kOneWave>(
      tiles, rowsOf, p.gateUpStride, halves, multipliers, dim,
      warpKBlocks(dim, warp), lane,
      [&] {
        stageHalves(reinterpret_cast<const float4 *>(x + size_t(p.token) * dim),
                    dim, input, halves, multipliers);
        __syncthreads();
      },
      [&](int tile, const float(&out)[2][4], int parity) {
        float sums[2];
        tileSums<2, kOneWave ? 2 : 1>(out, sums, parity);
        if (threadIdx.x < kTileRows) {
          const float a = sums[0], b = sums[1];
          act[size_t(pair) * actStride + tile * kTileRows + threadIdx.x] =
              p.shared ? siluTimesOfBf16(a, b)
                       : roundedToBf16(a / (1.f + expf(-a)) * b);
        }
      });
}

/// Grid (pairs as fp8DownKernel's, dim / 16; kOneWave: fewer, each block
/// taking every gridDim.y-th tile), 256 threads, tileSharedBytes(largest
/// inter): outputs [16 tile, 16 tile + 16) of the pair's down projection
/// on tensor cores, added into y as fp8DownKernel's.
template <bool kOneWave>
__global__ void __launch_bounds__(256, kOneWave ? 3 : 0)
    fp8DownTileKernel(const float *act, const int32_t *indices,
                      const float *weights, ExpertStacks stacks, int choices,
                      int experts, int inter, int dim, bool combineBf16,
                      PairOutput y, int actStride, SharedFp8Expert shared,
                      int routedPairs) {
  extern __shared__ float4 tileShared[];
  awaitPriorKernels();
  const int pair = blockIdx.x;
  const PairSource p = pairSource(indices, stacks, choices, experts, inter, dim,
                                  shared, routedPairs, nullptr);
  if (p.expert < 0)
    return; // the whole block
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  auto *halves = reinterpret_cast<__half *>(tileShared);
  float *multipliers = tileMultipliers(halves, p.inter);
  auto rowsOf = [&](int tile) {
    const int j0 = tile * kTileRows;
    return TileRows<1>{
        {static_cast<const uint8_t *>(p.stacks.down) +
         (size_t(p.expert) * dim + j0 + lane / 4) * p.downStride},
        {rowScales(p.stacks.downScales, p.expert, dim, p.downStride, j0)}};
  };
  blockTiles<1, kOneWave>(
      dim / kTileRows, rowsOf, p.downStride, halves, multipliers, p.inter,
      warpKBlocks(p.inter, warp), lane,
      [&] {
        stageHalves(
            reinterpret_cast<const float4 *>(act + size_t(pair) * actStride),
            p.inter, p.shared ? TileInput::GemmInput : TileInput::Bf16, halves,
            multipliers);
        __syncthreads();
      },
      [&](int tile, const float(&out)[1][4], int parity) {
        float sums[1];
        tileSums<1, kOneWave ? 2 : 1>(out, sums, parity);
        if (threadIdx.x < kTileRows) {
          float sum = sums[0];
          if (p.shared || combineBf16)
            sum = roundedToBf16(sum);
          y.addRow(pair, p.token, dim, tile * kTileRows + threadIdx.x,
                   (p.shared ? 1.f : weights[pair]) * sum);
        }
      });
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
  const int rounds = (rows + perBlockRound - 1) / perBlockRound;
  const int resident = residentBlocks(kernel, 256, sharedBytes);
  const int blocksWanted = std::clamp(resident / std::max(pairs, 1), 1, rounds);
  const int rowsPerWarp = (rounds + blocksWanted - 1) / blocksWanted;
  return {(rounds + rowsPerWarp - 1) / rowsPerWarp, rowsPerWarp};
}

} // namespace

bool melt::rt::cuda::moeFp8RowwiseFits(int inter, int dim) {
  // x's row in shared memory (within the 48 KiB a launch has by default).
  return inter > 0 && dim > 0 && inter % kWeightsPerLoad == 0 &&
         dim % kWeightsPerLoad == 0 && dim <= kMaxStagedDim;
}

cudaError_t melt::rt::cuda::moeExpertsFp8Rowwise(
    const float *x, const int32_t *indices, const float *weights,
    const ExpertStacks &stacks, int tokens, int choices, int experts, int inter,
    int dim, bool combineBf16, bool quantizeX, float *scratch, float *y,
    int32_t *bad, cudaStream_t stream, float *pairRows,
    const SharedFp8Expert *shared, bool tiles, bool oneWave,
    const RouteInExperts *route) {
  if (route &&
      (!tiles || !oneWave || !routesInExpertsFit(experts, route->config) ||
       route->config.topK != choices))
    return cudaErrorInvalidValue;
  if (stacks.type != ExpertStacks::Type::Fp8Blocks || !stacks.gateScales ||
      !stacks.upScales || !stacks.downScales || !moeFp8RowwiseFits(inter, dim))
    return cudaErrorInvalidValue;
  SharedFp8Expert sharedExpert;
  if (shared) {
    const ExpertStacks &s = shared->stacks;
    if (s.type != ExpertStacks::Type::Fp8Blocks || !s.gateScales ||
        !s.upScales || !s.downScales ||
        !moeFp8RowwiseFits(shared->inter, dim) || shared->gateUpStride < dim ||
        shared->gateUpStride % kWeightsPerLoad != 0 ||
        shared->downStride < shared->inter ||
        shared->downStride % kWeightsPerLoad != 0)
      return cudaErrorInvalidValue;
    sharedExpert = *shared;
  }
  cudaError_t e = startPairOutput(y, pairRows, tokens, dim, stream);
  if (e != cudaSuccess || tokens == 0)
    return e;
  const int routedPairs = tokens * choices,
            pairs = routedPairs + (shared ? tokens : 0);
  const int rows = std::max(inter, sharedExpert.inter);
  // On tensor cores: every tile its own block, or (oneWave) the blocks
  // resident at once taking the tiles in turn.
  const RouteInExperts routing = route ? *route : RouteInExperts{};
  auto launchTiles = [&]() -> cudaError_t {
    auto activation =
        route     ? (quantizeX ? fp8ActivationTileKernel<true, true, true>
                               : fp8ActivationTileKernel<false, true, true>)
        : oneWave ? (quantizeX ? fp8ActivationTileKernel<true, true>
                               : fp8ActivationTileKernel<false, true>)
                  : (quantizeX ? fp8ActivationTileKernel<true, false>
                               : fp8ActivationTileKernel<false, false>);
    auto down = oneWave ? fp8DownTileKernel<true> : fp8DownTileKernel<false>;
    const int upBlocks = oneWave ? waveOf(activation, pairs, rows, kTileRows,
                                          tileSharedBytes(dim))
                                       .blocksPerPair
                                 : (rows + kTileRows - 1) / kTileRows;
    const int downBlocks =
        oneWave ? waveOf(down, pairs, dim, kTileRows, tileSharedBytes(rows))
                      .blocksPerPair
                : (dim + kTileRows - 1) / kTileRows;
    if (cudaError_t e = launchOverlapped(
            activation, dim3(pairs, upBlocks), 256, tileSharedBytes(dim),
            stream, x, indices, stacks, choices, experts, inter, dim, scratch,
            rows, bad, sharedExpert, routedPairs, routing,
            const_cast<float *>(weights));
        e != cudaSuccess)
      return e;
    return launchOverlapped(
        down, dim3(pairs, downBlocks), 256, tileSharedBytes(rows), stream,
        scratch, indices, weights, stacks, choices, experts, inter, dim,
        combineBf16, PairOutput{y, pairRows}, rows, sharedExpert, routedPairs);
  };
  // On the CUDA cores: a warp a row.
  auto launchRows = [&]() -> cudaError_t {
    auto activation =
        quantizeX ? fp8ActivationKernel<true> : fp8ActivationKernel<false>;
    const size_t downShared = size_t(sharedExpert.inter) * sizeof(float);
    const Wave up = waveOf(activation, pairs, rows, 8, size_t(dim) * 4);
    const Wave down =
        waveOf(fp8DownKernel, pairs, dim, 8 * kDownRowsPerWarp, downShared);
    if (cudaError_t e = launchOverlapped(
            activation, dim3(pairs, up.blocksPerPair), 256,
            size_t(dim) * sizeof(float), stream, x, indices, stacks, choices,
            experts, inter, dim, up.rowsPerWarp, scratch, rows, bad,
            sharedExpert, routedPairs);
        e != cudaSuccess)
      return e;
    return launchOverlapped(
        fp8DownKernel, dim3(pairs, down.blocksPerPair), 256, downShared, stream,
        scratch, indices, weights, stacks, choices, experts, inter, dim,
        down.rowsPerWarp, combineBf16, PairOutput{y, pairRows}, rows,
        sharedExpert, routedPairs);
  };
  if ((e = tiles ? launchTiles() : launchRows()) != cudaSuccess)
    return e;
  return finishPairOutput(
      y, pairRows, indices, tokens, choices, experts, dim, stream,
      shared && pairRows ? pairRows + size_t(routedPairs) * dim : nullptr);
}
