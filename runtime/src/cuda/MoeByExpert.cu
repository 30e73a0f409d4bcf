//===- MoeByExpert.cu - routed experts grouped by expert (CUDA) -----------===//
#include "cuda/MoeByExpert.h"

#include "cuda/DependentLaunch.cuh"
#include "cuda/ExpertPairs.cuh"
#include "cuda/ModelKernels.h"
#include "cuda/ScratchLayout.h"
#include "cuda/TensorCoreMma.cuh"
#include "cuda/VectorLoads.cuh"

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>

using namespace melt::rt::cuda;

namespace {

/// Tokens an expert's weight rows are streamed for at once.
constexpr int kTokensPerPass = 8;

/// One block: offsets[e] = the first slot of expert e (offsets[experts] =
/// the valid pairs), pairOfSlot[slot] = the pair in that slot. A pair with
/// an expert out of range sets *bad and takes no slot.
__global__ void groupPairsKernel(const int32_t *indices, int pairs, int experts,
                                 int32_t *offsets, int32_t *pairOfSlot,
                                 int32_t *bad) {
  awaitPriorKernels();
  __shared__ int32_t count[kMoeByExpertMaxExperts],
      cursor[kMoeByExpertMaxExperts];
  for (int e = threadIdx.x; e < experts; e += blockDim.x)
    count[e] = 0;
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    int e = indices[p];
    if (e < 0 || e >= experts)
      *bad = 1;
    else
      atomicAdd(&count[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t total = 0;
    for (int e = 0; e < experts; ++e) {
      offsets[e] = cursor[e] = total;
      total += count[e];
    }
    offsets[experts] = total;
  }
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    int e = indices[p];
    if (e >= 0 && e < experts)
      pairOfSlot[atomicAdd(&cursor[e], 1)] = p;
  }
}

/// The activations of slots [first, first + M) (M >= the slots left: the
/// extra rows repeat the first and are not written) for gate/up row i.
template <typename W, int M>
__device__ void activationRows(const float *x, const int32_t *pairOfSlot,
                               const W *gateRow, const W *upRow, int first,
                               int count, int choices, int inter, int dim,
                               int i, int lane, float *act) {
  const float *xs[M];
#pragma unroll
  for (int r = 0; r < M; ++r)
    xs[r] = x + size_t(pairOfSlot[first + (r < count ? r : 0)] / choices) * dim;
  float a[M] = {}, b[M] = {};
  rowDotParts<W, M>(gateRow, xs, dim, lane, a);
  rowDotParts<W, M>(upRow, xs, dim, lane, b);
#pragma unroll
  for (int r = 0; r < M; ++r) {
    float g = warpSum(a[r]), u = warpSum(b[r]);
    if (lane == 0 && r < count)
      act[size_t(first + r) * inter + i] =
          asOperand<W>(g / (1.f + expf(-g)) * u);
  }
}

/// Grid (experts, inter / 8), 256 threads: a warp per gate/up row of the
/// block's expert, for all of that expert's slots.
template <typename W>
__global__ void activationKernel(const float *x, const int32_t *offsets,
                                 const int32_t *pairOfSlot, const W *gate,
                                 const W *up, int choices, int inter, int dim,
                                 float *act) {
  awaitPriorKernels();
  const int e = blockIdx.x, begin = offsets[e], end = offsets[e + 1];
  const int i = blockIdx.y * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (begin == end || i >= inter)
    return;
  const W *gateRow = gate + (size_t(e) * inter + i) * dim;
  const W *upRow = up + (size_t(e) * inter + i) * dim;
  for (int first = begin; first < end; first += kTokensPerPass) {
    int count = min(kTokensPerPass, end - first);
    if (count == 1)
      activationRows<W, 1>(x, pairOfSlot, gateRow, upRow, first, count, choices,
                           inter, dim, i, lane, act);
    else if (count == 2)
      activationRows<W, 2>(x, pairOfSlot, gateRow, upRow, first, count, choices,
                           inter, dim, i, lane, act);
    else if (count <= 4)
      activationRows<W, 4>(x, pairOfSlot, gateRow, upRow, first, count, choices,
                           inter, dim, i, lane, act);
    else
      activationRows<W, 8>(x, pairOfSlot, gateRow, upRow, first, count, choices,
                           inter, dim, i, lane, act);
  }
}

template <typename W, int M>
__device__ void downRows(const float *act, const int32_t *pairOfSlot,
                         const float *weights, const W *downRow, int first,
                         int count, int choices, int inter, int dim, int j,
                         int lane, bool combineBf16, PairOutput y) {
  const float *as[M];
#pragma unroll
  for (int r = 0; r < M; ++r)
    as[r] = act + size_t(first + (r < count ? r : 0)) * inter;
  float o[M] = {};
  rowDotParts<W, M>(downRow, as, inter, lane, o);
#pragma unroll
  for (int r = 0; r < M; ++r) {
    float sum = warpSum(o[r]);
    if (lane == 0 && r < count) {
      int pair = pairOfSlot[first + r];
      if (combineBf16)
        sum = __bfloat162float(__float2bfloat16(sum));
      y.add(pair, choices, dim, j, weights[pair] * sum);
    }
  }
}

/// Grid (experts, dim / 8), 256 threads: a warp per down row (output j) of
/// the block's expert, for all of its slots, added into y weighted.
template <typename W>
__global__ void downKernel(const float *act, const int32_t *offsets,
                           const int32_t *pairOfSlot, const float *weights,
                           const W *down, int choices, int inter, int dim,
                           bool combineBf16, PairOutput y) {
  awaitPriorKernels();
  const int e = blockIdx.x, begin = offsets[e], end = offsets[e + 1];
  const int j = blockIdx.y * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (begin == end || j >= dim)
    return;
  const W *downRow = down + (size_t(e) * dim + j) * inter;
  for (int first = begin; first < end; first += kTokensPerPass) {
    int count = min(kTokensPerPass, end - first);
    if (count == 1)
      downRows<W, 1>(act, pairOfSlot, weights, downRow, first, count, choices,
                     inter, dim, j, lane, combineBf16, y);
    else if (count == 2)
      downRows<W, 2>(act, pairOfSlot, weights, downRow, first, count, choices,
                     inter, dim, j, lane, combineBf16, y);
    else if (count <= 4)
      downRows<W, 4>(act, pairOfSlot, weights, downRow, first, count, choices,
                     inter, dim, j, lane, combineBf16, y);
    else
      downRows<W, 8>(act, pairOfSlot, weights, downRow, first, count, choices,
                     inter, dim, j, lane, combineBf16, y);
  }
}

/// Two e4m3 values (the low and high byte of `pair`) as two BF16, exactly:
/// the hardware's e4m3 -> FP16 conversion (every e4m3 value, subnormals
/// too, is a normal FP16 or zero), then the FP16 bits re-laid as BF16 bits
/// (exponent field kept, so the value is scaled by 2^-112, a normal BF16)
/// and multiplied back by 2^112 (a power of two: exact).
__device__ __forceinline__ uint32_t fp8PairToBf16(uint32_t pair) {
  __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(
      static_cast<__nv_fp8x2_storage_t>(pair), __NV_E4M3);
  const uint32_t bits = uint32_t(h.x) | (uint32_t(h.y) << 16);
  const uint32_t magnitude = bits & 0x7fff7fffu;
  uint32_t scaled = (magnitude >> 3) | (bits ^ magnitude);
  __nv_bfloat162 v = *reinterpret_cast<__nv_bfloat162 *>(&scaled);
  const uint32_t twoTo112 = 0x77807780u; // BF16 2^112, twice
  v = __hmul2(v, *reinterpret_cast<const __nv_bfloat162 *>(&twoTo112));
  return *reinterpret_cast<uint32_t *>(&v);
}

/// 8 consecutive weights of a row as loaded: 16 bytes of BF16 or 8 of FP8
/// (streamed), and as four BF16 pairs (FP8 widened).
template <typename W>
using RawEight =
    std::conditional_t<std::is_same_v<W, __nv_bfloat16>, uint4, uint2>;

template <typename W>
__device__ __forceinline__ RawEight<W> loadEight(const W *p, bool in) {
  if constexpr (std::is_same_v<W, __nv_bfloat16>)
    return in ? streamLoad(p) : make_uint4(0, 0, 0, 0);
  else
    return in ? __ldcs(reinterpret_cast<const uint2 *>(p)) : make_uint2(0, 0);
}

__device__ __forceinline__ uint4 asBf16Pairs(uint4 v) { return v; }
__device__ __forceinline__ uint4 asBf16Pairs(uint2 v) {
  return make_uint4(fp8PairToBf16(v.x), fp8PairToBf16(v.x >> 16),
                    fp8PairToBf16(v.y), fp8PairToBf16(v.y >> 16));
}

/// K chunks of 32 per FP8 scale block.
constexpr int kScaleBlock = 128, kChunksPerBlock = kScaleBlock / 32;

/// Weights on tensor cores: mma.sync m16n8k16 BF16, a warp's 16 weight
/// rows (A) against 8 tokens (B), FP32 accumulation. K is read 32 at a
/// time: lane (g, t) loads the 8 values of rows g and g + 8 at 8t (16
/// bytes of BF16, 8 of FP8) and the matching 8 values of token g, used as
/// two k16 steps (the same permutation of K for A and B, so the products
/// are unchanged).
/// acc[w][n] += rows[w][16 x K] . tokens[n]^T for the kWeights weights,
/// rows g and g + 8 of each at rows[w] and rows[w] + 8 K, and kGroups
/// groups of 8 tokens; tokens[n] is the lane's token (g) of group n, a row
/// of F32 inputs (rounded to BF16 here), or null for none. Each iteration
/// has all its weight loads in flight before it widens or multiplies any:
/// 128 of K for BF16, 256 (the same bytes) for FP8 with one group, 128
/// with two (whose tokens' operands take the registers). Each weight
/// fragment serves every group: a group more reads no weight again. FP8
/// weights (W = __nv_fp8_e4m3): each 128 of K is summed on its own and
/// added times its block's scale, scales[w][k / 128] (the 16 rows lie in
/// one 128-row block), as DeepSeek-V3's FP8 GEMMs promote partial sums. A
/// token's sums are the same whatever its group (the same products in the
/// same order).
template <typename W, int kWeights, int kGroups>
__device__ __forceinline__ void mmaRows(const W *const (&rows)[kWeights],
                                        const float *const (&scales)[kWeights],
                                        const float *const (&tokens)[kGroups],
                                        int K, int t,
                                        float (&acc)[kWeights][kGroups][4]) {
  constexpr bool kScaled = !std::is_same_v<W, __nv_bfloat16>;
  constexpr int kBlocks = kScaled && kGroups == 1 ? 2 : 1,
                kChunks = kBlocks * kChunksPerBlock;
  for (int kb = 0; kb < K; kb += 32 * kChunks) {
    RawEight<W> w[kChunks][kWeights][2];
#pragma unroll
    for (int u = 0; u < kChunks; ++u) {
      const int k = kb + 32 * u + 8 * t;
      const bool in = kb + 32 * u < K;
#pragma unroll
      for (int i = 0; i < kWeights; ++i) {
        w[u][i][0] = loadEight(rows[i] + k, in);
        w[u][i][1] = loadEight(rows[i] + size_t(8) * K + k, in);
      }
    }
    // The tokens' values, rounded to BF16 pairs (the B operands).
    uint32_t b[kChunks][kGroups][4];
#pragma unroll
    for (int u = 0; u < kChunks; ++u)
#pragma unroll
      for (int n = 0; n < kGroups; ++n) {
        const float *token = tokens[n];
        const int k = kb + 32 * u + 8 * t;
        const bool in = kb + 32 * u < K && token;
        const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
        const float4 lo = in ? *reinterpret_cast<const float4 *>(token + k)
                             : zero,
                     hi = in ? *reinterpret_cast<const float4 *>(token + k + 4)
                             : zero;
        b[u][n][0] = packBf16(lo.x, lo.y);
        b[u][n][1] = packBf16(lo.z, lo.w);
        b[u][n][2] = packBf16(hi.x, hi.y);
        b[u][n][3] = packBf16(hi.z, hi.w);
      }
#pragma unroll
    for (int block = 0; block < kBlocks; ++block) {
      const int k0 = kb + block * kScaleBlock;
      if (k0 >= K)
        break;
      float part[kWeights][kGroups][4] = {};
#pragma unroll
      for (int v = 0; v < kChunksPerBlock; ++v) {
        const int u = block * kChunksPerBlock + v;
        if (kb + 32 * u >= K)
          break;
#pragma unroll
        for (int i = 0; i < kWeights; ++i) {
          const uint4 g = asBf16Pairs(w[u][i][0]), g8 = asBf16Pairs(w[u][i][1]);
#pragma unroll
          for (int n = 0; n < kGroups; ++n) {
            float(&sum)[4] = kScaled ? part[i][n] : acc[i][n];
            mma16816(sum, {g.x, g8.x, g.y, g8.y}, b[u][n][0], b[u][n][1]);
            mma16816(sum, {g.z, g8.z, g.w, g8.w}, b[u][n][2], b[u][n][3]);
          }
        }
      }
      if constexpr (kScaled) {
#pragma unroll
        for (int i = 0; i < kWeights; ++i) {
          const float s = scales[i][k0 / kScaleBlock];
#pragma unroll
          for (int n = 0; n < kGroups; ++n)
#pragma unroll
            for (int c = 0; c < 4; ++c)
              acc[i][n][c] += s * part[i][n][c];
        }
      }
    }
  }
}

/// The scales of the 128-row block of rows [row, row + 16) of expert e in
/// a stack of `rows` x `cols` matrices (null for BF16 weights).
__device__ __forceinline__ const float *
blockScales(const float *scales, int e, int rows, int cols, int row) {
  if (!scales)
    return nullptr;
  const int rowBlocks = (rows + kScaleBlock - 1) / kScaleBlock,
            colBlocks = (cols + kScaleBlock - 1) / kScaleBlock;
  return scales + (size_t(e) * rowBlocks + row / kScaleBlock) * colBlocks;
}

/// pass(groups, first, count) over an expert's slots [begin, end), the
/// passes of the tensor-core expert kernels: 8 slots at a time (groups an
/// integral_constant of 1), or with kWide 16 while more than 8 are left
/// (groups 2: the expert's weight rows streamed once for 16 tokens, not
/// twice).
template <bool kWide, class Pass>
__device__ __forceinline__ void forEachPass(int begin, int end, Pass pass) {
  if constexpr (kWide) {
    for (int first = begin; first < end;) {
      const int left = end - first;
      if (left > 8) {
        const int count = min(16, left);
        pass(std::integral_constant<int, 2>(), first, count);
        first += count;
      } else {
        pass(std::integral_constant<int, 1>(), first, left);
        first += left;
      }
    }
  } else {
    for (int first = begin; first < end; first += 8)
      pass(std::integral_constant<int, 1>(), first, min(8, end - first));
  }
}

/// One pass of activationMmaKernel: slots [pass, pass + count) of the
/// warp's 16 gate/up rows at rowBase.
template <typename W, int kGroups>
__device__ __forceinline__ void
activationPass(const float *x, const int32_t *pairOfSlot,
               const W *const (&rows)[2], const float *const (&scales)[2],
               int pass, int count, int choices, int inter, int dim,
               int rowBase, int g, int t, float *act) {
  const float *tokens[kGroups];
#pragma unroll
  for (int n = 0; n < kGroups; ++n)
    tokens[n] = 8 * n + g < count
                    ? x + size_t(pairOfSlot[pass + 8 * n + g] / choices) * dim
                    : nullptr;
  float acc[2][kGroups][4] = {};
  mmaRows<W, 2, kGroups>(rows, scales, tokens, dim, t, acc);
  // acc[.][n][0..1]: row g, slots 8 n + 2t, + 1; acc[.][n][2..3]: row g + 8.
#pragma unroll
  for (int n = 0; n < kGroups; ++n)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int slot = 8 * n + 2 * t + c % 2, row = rowBase + g + (c / 2) * 8;
      if (slot < count) {
        float a = acc[0][n][c], b = acc[1][n][c];
        act[size_t(pass + slot) * inter + row] =
            asOperand<__nv_bfloat16>(a / (1.f + expf(-a)) * b);
      }
    }
}

/// Grid (experts, inter / 128), 256 threads: a warp per 16 gate/up rows of
/// the block's expert, for its slots 8 at a time (kWide: 16 at a time
/// while more than 8 are left).
template <typename W, bool kWide>
__global__ void __launch_bounds__(256)
    activationMmaKernel(const float *x, const int32_t *offsets,
                        const int32_t *pairOfSlot, const W *gate, const W *up,
                        const float *gateScales, const float *upScales,
                        int choices, int inter, int dim, float *act) {
  awaitPriorKernels();
  const int e = blockIdx.x, begin = offsets[e], end = offsets[e + 1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int rowBase = (blockIdx.y * 8 + warp) * 16;
  if (begin == end || rowBase >= inter)
    return;
  const size_t first = (size_t(e) * inter + rowBase + g) * dim;
  const W *const rows[2] = {gate + first, up + first};
  const float *const scales[2] = {
      blockScales(gateScales, e, inter, dim, rowBase),
      blockScales(upScales, e, inter, dim, rowBase)};
  forEachPass<kWide>(begin, end, [&](auto groups, int first, int count) {
    activationPass<W, decltype(groups)::value>(x, pairOfSlot, rows, scales,
                                               first, count, choices, inter,
                                               dim, rowBase, g, t, act);
  });
}

/// One pass of downMmaKernel: slots [pass, pass + count) of the warp's 16
/// down rows at rowBase, added into y weighted.
template <typename W, int kGroups>
__device__ __forceinline__ void
downPass(const float *act, const int32_t *pairOfSlot, const float *weights,
         const W *const (&rows)[1], const float *const (&scales)[1], int pass,
         int count, int choices, int inter, int dim, int rowBase, int g, int t,
         bool combineBf16, PairOutput y) {
  const float *tokens[kGroups];
#pragma unroll
  for (int n = 0; n < kGroups; ++n)
    tokens[n] =
        8 * n + g < count ? act + size_t(pass + 8 * n + g) * inter : nullptr;
  float acc[1][kGroups][4] = {};
  mmaRows<W, 1, kGroups>(rows, scales, tokens, inter, t, acc);
#pragma unroll
  for (int n = 0; n < kGroups; ++n)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int slot = 8 * n + 2 * t + c % 2, row = rowBase + g + (c / 2) * 8;
      if (slot < count) {
        const int pair = pairOfSlot[pass + slot];
        float sum = acc[0][n][c];
        if (combineBf16)
          sum = __bfloat162float(__float2bfloat16(sum));
        y.add(pair, choices, dim, row, weights[pair] * sum);
      }
    }
}

/// Grid (experts, dim / 128), 256 threads: a warp per 16 down rows (outputs)
/// of the block's expert, for its slots 8 at a time (kWide: 16 while more
/// than 8 are left), added into y weighted.
template <typename W, bool kWide>
__global__ void __launch_bounds__(256)
    downMmaKernel(const float *act, const int32_t *offsets,
                  const int32_t *pairOfSlot, const float *weights,
                  const W *down, const float *downScales, int choices,
                  int inter, int dim, bool combineBf16, PairOutput y) {
  awaitPriorKernels();
  const int e = blockIdx.x, begin = offsets[e], end = offsets[e + 1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int rowBase = (blockIdx.y * 8 + warp) * 16;
  if (begin == end || rowBase >= dim)
    return;
  const W *const rows[1] = {down + (size_t(e) * dim + rowBase + g) * inter};
  const float *const scales[1] = {
      blockScales(downScales, e, dim, inter, rowBase)};
  forEachPass<kWide>(begin, end, [&](auto groups, int first, int count) {
    downPass<W, decltype(groups)::value>(act, pairOfSlot, weights, rows, scales,
                                         first, count, choices, inter, dim,
                                         rowBase, g, t, combineBf16, y);
  });
}

template <typename W, bool kWide>
void launchMmaKernels(const float *x, const int32_t *offsets,
                      const int32_t *pairOfSlot, const float *weights,
                      const ExpertStacks &stacks, int choices, int experts,
                      int inter, int dim, bool combineBf16, float *act,
                      PairOutput y, cudaStream_t stream) {
  launchOverlapped(activationMmaKernel<W, kWide>,
                   dim3(experts, (inter + 127) / 128), 256, 0, stream, x,
                   offsets, pairOfSlot, static_cast<const W *>(stacks.gate),
                   static_cast<const W *>(stacks.up), stacks.gateScales,
                   stacks.upScales, choices, inter, dim, act);
  launchOverlapped(downMmaKernel<W, kWide>, dim3(experts, (dim + 127) / 128),
                   256, 0, stream, act, offsets, pairOfSlot, weights,
                   static_cast<const W *>(stacks.down), stacks.downScales,
                   choices, inter, dim, combineBf16, y);
}

template <typename W>
void launchMma(bool widePasses, const float *x, const int32_t *offsets,
               const int32_t *pairOfSlot, const float *weights,
               const ExpertStacks &stacks, int choices, int experts, int inter,
               int dim, bool combineBf16, float *act, PairOutput y,
               cudaStream_t stream) {
  if (widePasses)
    launchMmaKernels<W, true>(x, offsets, pairOfSlot, weights, stacks, choices,
                              experts, inter, dim, combineBf16, act, y, stream);
  else
    launchMmaKernels<W, false>(x, offsets, pairOfSlot, weights, stacks, choices,
                               experts, inter, dim, combineBf16, act, y,
                               stream);
}

template <typename W>
void launchExperts(const float *x, const int32_t *offsets,
                   const int32_t *pairOfSlot, const float *weights,
                   const ExpertStacks &stacks, int choices, int experts,
                   int inter, int dim, bool combineBf16, float *act,
                   PairOutput y, cudaStream_t stream) {
  launchOverlapped(activationKernel<W>, dim3(experts, (inter + 7) / 8), 256, 0,
                   stream, x, offsets, pairOfSlot,
                   static_cast<const W *>(stacks.gate),
                   static_cast<const W *>(stacks.up), choices, inter, dim, act);
  launchOverlapped(downKernel<W>, dim3(experts, (dim + 7) / 8), 256, 0, stream,
                   act, offsets, pairOfSlot, weights,
                   static_cast<const W *>(stacks.down), choices, inter, dim,
                   combineBf16, y);
}

} // namespace

bool melt::rt::cuda::moeByExpertTensorCoresFit(ExpertStacks::Type type,
                                               int inter, int dim) {
  return type != ExpertStacks::Type::F32 && inter % 32 == 0 && dim % 32 == 0;
}

size_t melt::rt::cuda::moeByExpertScratchBytes(int tokens, int choices,
                                               int experts, int inter) {
  size_t pairs = size_t(tokens) * choices;
  return scratchPartBytes((size_t(experts) + 1) * sizeof(int32_t)) +
         scratchPartBytes(pairs * sizeof(int32_t)) +
         scratchPartBytes(pairs * inter * sizeof(float));
}

cudaError_t melt::rt::cuda::moeExpertsByExpert(
    const float *x, const int32_t *indices, const float *weights,
    const ExpertStacks &stacks, int tokens, int choices, int experts, int inter,
    int dim, bool combineBf16, bool tensorCores, void *scratch, float *y,
    int32_t *bad, cudaStream_t stream, float *pairRows, bool widePasses) {
  using Type = ExpertStacks::Type;
  if (experts < 1 || experts > kMoeByExpertMaxExperts)
    return cudaErrorInvalidValue;
  const bool mmaFits = moeByExpertTensorCoresFit(stacks.type, inter, dim) &&
                       reinterpret_cast<uintptr_t>(x) % 16 == 0;
  // FP8 stacks have no CUDA-core kernel: the tensor cores or nothing.
  if (stacks.type == Type::Fp8Blocks &&
      (!mmaFits || !stacks.gateScales || !stacks.upScales ||
       !stacks.downScales))
    return cudaErrorInvalidValue;
  if (cudaError_t e = startPairOutput(y, pairRows, tokens, dim, stream);
      e != cudaSuccess || tokens == 0)
    return e;
  const int pairs = tokens * choices;
  const PairOutput out{y, pairRows};
  char *bytes = static_cast<char *>(scratch);
  auto *offsets = reinterpret_cast<int32_t *>(bytes);
  bytes += scratchPartBytes((size_t(experts) + 1) * sizeof(int32_t));
  auto *pairOfSlot = reinterpret_cast<int32_t *>(bytes);
  bytes += scratchPartBytes(size_t(pairs) * sizeof(int32_t));
  auto *act = reinterpret_cast<float *>(bytes);
  launchOverlapped(groupPairsKernel, 1, 512, 0, stream, indices, pairs, experts,
                   offsets, pairOfSlot, bad);
  // Tensor cores where asked and the shapes take them: BF16 products of
  // BF16-rounded inputs, as the row kernels compute them.
  if (stacks.type == Type::Fp8Blocks)
    launchMma<__nv_fp8_e4m3>(widePasses, x, offsets, pairOfSlot, weights,
                             stacks, choices, experts, inter, dim, combineBf16,
                             act, out, stream);
  else if (tensorCores && mmaFits)
    launchMma<__nv_bfloat16>(widePasses, x, offsets, pairOfSlot, weights,
                             stacks, choices, experts, inter, dim, combineBf16,
                             act, out, stream);
  else if (stacks.type == Type::BF16)
    launchExperts<__nv_bfloat16>(x, offsets, pairOfSlot, weights, stacks,
                                 choices, experts, inter, dim, combineBf16, act,
                                 out, stream);
  else
    launchExperts<float>(x, offsets, pairOfSlot, weights, stacks, choices,
                         experts, inter, dim, combineBf16, act, out, stream);
  return finishPairOutput(y, pairRows, indices, tokens, choices, experts, dim,
                          stream);
}
