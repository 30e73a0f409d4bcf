//===- MoeByExpert.cu - routed experts grouped by expert (CUDA) -----------===//
#include "cuda/MoeByExpert.h"

#include "cuda/VectorLoads.cuh"

#include <cuda_bf16.h>

#include <cstdint>

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
                         int lane, bool combineBf16, float *y) {
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
      atomicAdd(&y[size_t(pair / choices) * dim + j], weights[pair] * sum);
    }
  }
}

/// Grid (experts, dim / 8), 256 threads: a warp per down row (output j) of
/// the block's expert, for all of its slots, added into y weighted.
template <typename W>
__global__ void downKernel(const float *act, const int32_t *offsets,
                           const int32_t *pairOfSlot, const float *weights,
                           const W *down, int choices, int inter, int dim,
                           bool combineBf16, float *y) {
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

/// BF16 weights on tensor cores: mma.sync m16n8k16, a warp's 16 weight
/// rows (A) against 8 tokens (B), FP32 accumulation. K is read 32 at a
/// time: lane (g, t) loads 16 bytes of rows g and g + 8 at 8t and the
/// matching 8 values of token g, used as two k16 steps (the same
/// permutation of K for A and B, so the products are unchanged).
__device__ __forceinline__ void mmaBf16(float (&d)[4], uint32_t a0, uint32_t a1,
                                        uint32_t a2, uint32_t a3, uint32_t b0,
                                        uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
               "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t packBf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t *>(&v);
}

/// K chunks of 32 each lane has in flight.
constexpr int kMmaUnroll = 4;

/// acc[w] += rows[w][16 x K] . token^T for the kWeights weights, rows g and
/// g + 8 of each at rows[w] and rows[w] + 8 K; `token` is the lane's token
/// (g) row of F32 inputs (rounded to BF16 here), or null for none.
template <int kWeights>
__device__ __forceinline__ void
mmaRows(const __nv_bfloat16 *const (&rows)[kWeights], const float *token, int K,
        int t, float (&acc)[kWeights][4]) {
  for (int kb = 0; kb < K; kb += 32 * kMmaUnroll) {
    uint4 w[kMmaUnroll][kWeights][2];
    float4 x[kMmaUnroll][2];
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      const int k = kb + 32 * u + 8 * t;
      const bool in = kb + 32 * u < K;
#pragma unroll
      for (int i = 0; i < kWeights; ++i) {
        w[u][i][0] = in ? streamLoad(rows[i] + k) : make_uint4(0, 0, 0, 0);
        w[u][i][1] = in ? streamLoad(rows[i] + size_t(8) * K + k)
                        : make_uint4(0, 0, 0, 0);
      }
      const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
      x[u][0] =
          in && token ? *reinterpret_cast<const float4 *>(token + k) : zero;
      x[u][1] =
          in && token ? *reinterpret_cast<const float4 *>(token + k + 4) : zero;
    }
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      if (kb + 32 * u >= K)
        break;
      const uint32_t b0 = packBf16(x[u][0].x, x[u][0].y),
                     b1 = packBf16(x[u][0].z, x[u][0].w),
                     b2 = packBf16(x[u][1].x, x[u][1].y),
                     b3 = packBf16(x[u][1].z, x[u][1].w);
#pragma unroll
      for (int i = 0; i < kWeights; ++i) {
        const uint4 g = w[u][i][0], g8 = w[u][i][1];
        mmaBf16(acc[i], g.x, g8.x, g.y, g8.y, b0, b1);
        mmaBf16(acc[i], g.z, g8.z, g.w, g8.w, b2, b3);
      }
    }
  }
}

/// Grid (experts, inter / 128), 256 threads: a warp per 16 gate/up rows of
/// the block's expert, for its slots 8 at a time.
__global__ void __launch_bounds__(256)
    activationMmaKernel(const float *x, const int32_t *offsets,
                        const int32_t *pairOfSlot, const __nv_bfloat16 *gate,
                        const __nv_bfloat16 *up, int choices, int inter,
                        int dim, float *act) {
  const int e = blockIdx.x, begin = offsets[e], end = offsets[e + 1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int rowBase = (blockIdx.y * 8 + warp) * 16;
  if (begin == end || rowBase >= inter)
    return;
  const size_t first = (size_t(e) * inter + rowBase + g) * dim;
  const __nv_bfloat16 *const rows[2] = {gate + first, up + first};
  for (int pass = begin; pass < end; pass += 8) {
    const int count = min(8, end - pass);
    const float *token =
        g < count ? x + size_t(pairOfSlot[pass + g] / choices) * dim : nullptr;
    float acc[2][4] = {};
    mmaRows<2>(rows, token, dim, t, acc);
    // acc[.][0..1]: row g, tokens 2t, 2t + 1; acc[.][2..3]: row g + 8.
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int slot = 2 * t + c % 2, row = rowBase + g + (c / 2) * 8;
      if (slot < count) {
        float a = acc[0][c], b = acc[1][c];
        act[size_t(pass + slot) * inter + row] =
            asOperand<__nv_bfloat16>(a / (1.f + expf(-a)) * b);
      }
    }
  }
}

/// Grid (experts, dim / 128), 256 threads: a warp per 16 down rows (outputs)
/// of the block's expert, for its slots 8 at a time, added into y weighted.
__global__ void __launch_bounds__(256)
    downMmaKernel(const float *act, const int32_t *offsets,
                  const int32_t *pairOfSlot, const float *weights,
                  const __nv_bfloat16 *down, int choices, int inter, int dim,
                  bool combineBf16, float *y) {
  const int e = blockIdx.x, begin = offsets[e], end = offsets[e + 1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int rowBase = (blockIdx.y * 8 + warp) * 16;
  if (begin == end || rowBase >= dim)
    return;
  const __nv_bfloat16 *const rows[1] = {down + (size_t(e) * dim + rowBase + g) *
                                                   inter};
  for (int pass = begin; pass < end; pass += 8) {
    const int count = min(8, end - pass);
    const float *token = g < count ? act + size_t(pass + g) * inter : nullptr;
    float acc[1][4] = {};
    mmaRows<1>(rows, token, inter, t, acc);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int slot = 2 * t + c % 2, row = rowBase + g + (c / 2) * 8;
      if (slot < count) {
        const int pair = pairOfSlot[pass + slot];
        float sum = acc[0][c];
        if (combineBf16)
          sum = __bfloat162float(__float2bfloat16(sum));
        atomicAdd(&y[size_t(pair / choices) * dim + row], weights[pair] * sum);
      }
    }
  }
}

template <typename W>
void launchExperts(const float *x, const int32_t *offsets,
                   const int32_t *pairOfSlot, const float *weights,
                   const void *gate, const void *up, const void *down,
                   int choices, int experts, int inter, int dim,
                   bool combineBf16, float *act, float *y,
                   cudaStream_t stream) {
  activationKernel<W><<<dim3(experts, (inter + 7) / 8), 256, 0, stream>>>(
      x, offsets, pairOfSlot, static_cast<const W *>(gate),
      static_cast<const W *>(up), choices, inter, dim, act);
  downKernel<W><<<dim3(experts, (dim + 7) / 8), 256, 0, stream>>>(
      act, offsets, pairOfSlot, weights, static_cast<const W *>(down), choices,
      inter, dim, combineBf16, y);
}

size_t alignedBytes(size_t bytes) { return (bytes + 255) / 256 * 256; }

} // namespace

bool melt::rt::cuda::moeByExpertTensorCoresFit(bool bf16Weights, int inter,
                                               int dim) {
  return bf16Weights && inter % 32 == 0 && dim % 32 == 0;
}

size_t melt::rt::cuda::moeByExpertScratchBytes(int tokens, int choices,
                                               int experts, int inter) {
  size_t pairs = size_t(tokens) * choices;
  return alignedBytes((size_t(experts) + 1) * sizeof(int32_t)) +
         alignedBytes(pairs * sizeof(int32_t)) +
         alignedBytes(pairs * inter * sizeof(float));
}

cudaError_t melt::rt::cuda::moeExpertsByExpert(
    const float *x, const int32_t *indices, const float *weights,
    const void *gate, const void *up, const void *down, bool bf16Weights,
    int tokens, int choices, int experts, int inter, int dim, bool combineBf16,
    bool tensorCores, void *scratch, float *y, int32_t *bad,
    cudaStream_t stream) {
  if (experts < 1 || experts > kMoeByExpertMaxExperts)
    return cudaErrorInvalidValue;
  cudaError_t e =
      cudaMemsetAsync(y, 0, size_t(tokens) * dim * sizeof(float), stream);
  if (e != cudaSuccess || tokens == 0)
    return e;
  const int pairs = tokens * choices;
  char *bytes = static_cast<char *>(scratch);
  auto *offsets = reinterpret_cast<int32_t *>(bytes);
  bytes += alignedBytes((size_t(experts) + 1) * sizeof(int32_t));
  auto *pairOfSlot = reinterpret_cast<int32_t *>(bytes);
  bytes += alignedBytes(size_t(pairs) * sizeof(int32_t));
  auto *act = reinterpret_cast<float *>(bytes);
  groupPairsKernel<<<1, 512, 0, stream>>>(indices, pairs, experts, offsets,
                                          pairOfSlot, bad);
  // Tensor cores where asked and the shapes take them: BF16 products of
  // BF16-rounded inputs, as the row kernels compute them.
  if (tensorCores && moeByExpertTensorCoresFit(bf16Weights, inter, dim) &&
      reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    using B = __nv_bfloat16;
    activationMmaKernel<<<dim3(experts, (inter + 127) / 128), 256, 0, stream>>>(
        x, offsets, pairOfSlot, static_cast<const B *>(gate),
        static_cast<const B *>(up), choices, inter, dim, act);
    downMmaKernel<<<dim3(experts, (dim + 127) / 128), 256, 0, stream>>>(
        act, offsets, pairOfSlot, weights, static_cast<const B *>(down),
        choices, inter, dim, combineBf16, y);
  } else if (bf16Weights)
    launchExperts<__nv_bfloat16>(x, offsets, pairOfSlot, weights, gate, up,
                                 down, choices, experts, inter, dim,
                                 combineBf16, act, y, stream);
  else
    launchExperts<float>(x, offsets, pairOfSlot, weights, gate, up, down,
                         choices, experts, inter, dim, combineBf16, act, y,
                         stream);
  return cudaGetLastError();
}
