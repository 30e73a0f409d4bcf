//===- MoeByExpert.cu - routed experts grouped by expert (CUDA) -----------===//
#include "cuda/MoeByExpert.h"

#include "cuda/VectorLoads.cuh"

#include <cuda_bf16.h>

using namespace melt::rt::cuda;

namespace {

/// Tokens an expert's weight rows are streamed for at once.
constexpr int kTokensPerPass = 8;

/// One block: offsets[e] = the first slot of expert e (offsets[experts] =
/// the valid pairs), pairOfSlot[slot] = the pair in that slot. A pair with
/// an expert out of range sets *bad and takes no slot.
__global__ void groupPairsKernel(const int32_t *indices, int pairs,
                                 int experts, int32_t *offsets,
                                 int32_t *pairOfSlot, int32_t *bad) {
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
      act[size_t(first + r) * inter + i] = asOperand<W>(g / (1.f + expf(-g)) * u);
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
      activationRows<W, 1>(x, pairOfSlot, gateRow, upRow, first, count,
                           choices, inter, dim, i, lane, act);
    else if (count == 2)
      activationRows<W, 2>(x, pairOfSlot, gateRow, upRow, first, count,
                           choices, inter, dim, i, lane, act);
    else if (count <= 4)
      activationRows<W, 4>(x, pairOfSlot, gateRow, upRow, first, count,
                           choices, inter, dim, i, lane, act);
    else
      activationRows<W, 8>(x, pairOfSlot, gateRow, upRow, first, count,
                           choices, inter, dim, i, lane, act);
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
    int tokens, int choices, int experts, int inter, int dim,
    bool combineBf16, void *scratch, float *y, int32_t *bad,
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
  if (bf16Weights)
    launchExperts<__nv_bfloat16>(x, offsets, pairOfSlot, weights, gate, up,
                                 down, choices, experts, inter, dim,
                                 combineBf16, act, y, stream);
  else
    launchExperts<float>(x, offsets, pairOfSlot, weights, gate, up, down,
                         choices, experts, inter, dim, combineBf16, act, y,
                         stream);
  return cudaGetLastError();
}
