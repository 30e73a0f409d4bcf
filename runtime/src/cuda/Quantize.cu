//===- Quantize.cu - FP8 activation quantization (CUDA) -------------------===//
//
// One warp per 128-value block: each lane holds 4 values, the block's amax
// is a warp reduction, and the lane writes its 4 e4m3 bytes as one word.
//
//===----------------------------------------------------------------------===//
#include "cuda/Quantize.h"

#include "cuda/BlockQuantize.cuh"
#include "cuda/DependentLaunch.cuh"
#include "cuda/Silu.cuh"
#include "cuda/WarpReduce.cuh"

#include <cstdint>

using namespace melt::rt::cuda;

namespace {

/// Quantizes the 4 values a lane holds of one 128-value block; lane 0
/// writes the block's scale.
__device__ void quantizeBlock(const float (&v)[4], __nv_fp8_e4m3 *q,
                              float *scale, int lane) {
  float amax =
      fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
  amax = warpMax(amax);
  const float s = gemmInputScale(amax);
  reinterpret_cast<uint32_t *>(q)[lane] =
      gemmInputCodes(v[0], v[1], v[2], v[3], 1.f / s);
  if (lane == 0)
    *scale = s;
}

__device__ __forceinline__ void loadFour(const __nv_bfloat16 *x,
                                         float (&v)[4]) {
  const __nv_bfloat162 *in = reinterpret_cast<const __nv_bfloat162 *>(x);
  float2 a = __bfloat1622float2(in[0]), b = __bfloat1622float2(in[1]);
  v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
}

__device__ __forceinline__ void loadFour(const float *x, float (&v)[4]) {
  float4 a = *reinterpret_cast<const float4 *>(x);
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
}

__device__ __forceinline__ float toFloat(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
__device__ __forceinline__ float toFloat(float v) { return v; }

/// Lane `lane`'s 4 values of the 128-value block at `col` of row xr (kIn
/// values held; the rest quantize as zeros), times silu(x) where `ur`
/// (the row of up) is given.
template <typename T, typename U>
__device__ __forceinline__ void laneValues(const T *xr, const U *ur, int col,
                                           int kIn, float (&v)[4]) {
  if (kIn % 4 == 0 && col + 4 <= kIn)
    loadFour(xr + col, v);
  else
    for (int i = 0; i < 4; ++i)
      v[i] = col + i < kIn ? toFloat(xr[col + i]) : 0.f;
  if (ur) {
    float u[4];
    if (kIn % 4 == 0 && col + 4 <= kIn)
      loadFour(ur + col, u);
    else
      for (int i = 0; i < 4; ++i)
        u[i] = col + i < kIn ? toFloat(ur[col + i]) : 0.f;
    for (int i = 0; i < 4; ++i)
      v[i] = col + i < kIn ? siluTimes(v[i], u[i]) : 0.f;
  }
}

/// A warp per 128-value block of kRows consecutive rows of q's k values:
/// x's rows hold the first kIn of them (kIn <= k; the rest quantize as
/// zeros), times silu(x) where `up` is given (SiLU-mul and its
/// quantization in one pass). Each row's block is quantized as alone;
/// with kRows > 1 (many rows) every row's loads are in flight together
/// and lane r writes row r's scale, the rows' scales being adjacent.
template <typename T, typename U, int kRows>
__global__ void quantizeRowsKernel(const T *x, const U *up, int m, int kIn,
                                   int k, __nv_fp8_e4m3 *q, float *scales) {
  awaitPriorKernels();
  const int blocksPerRow = k / kQuantBlock;
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int groups = (m + kRows - 1) / kRows;
  if (warp >= groups * blocksPerRow)
    return;
  const int row0 = warp / blocksPerRow * kRows, blk = warp % blocksPerRow;
  const int col = blk * kQuantBlock + lane * 4;
  float v[kRows][4];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
    if (row0 + r < m)
      laneValues(x + size_t(row0 + r) * kIn,
                 up ? up + size_t(row0 + r) * kIn : nullptr, col, kIn, v[r]);
  float scale = 0.f;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (row0 + r >= m)
      break;
    float amax = fmaxf(fmaxf(fabsf(v[r][0]), fabsf(v[r][1])),
                       fmaxf(fabsf(v[r][2]), fabsf(v[r][3])));
    const float s = gemmInputScale(warpMax(amax));
    reinterpret_cast<uint32_t *>(q + size_t(row0 + r) * k +
                                 blk * kQuantBlock)[lane] =
        gemmInputCodes(v[r][0], v[r][1], v[r][2], v[r][3], 1.f / s);
    if (lane == r)
      scale = s;
  }
  if (lane < kRows && row0 + lane < m)
    scales[size_t(blk) * m + row0 + lane] = scale;
}

/// One block of 256 threads per row: the sum of squares, then each warp
/// normalizes and quantizes blocks w, w + 8, ...
__global__ void rmsNormQuantizeKernel(const __nv_bfloat16 *x,
                                      const __nv_bfloat16 *gamma, float eps,
                                      int m, int k, __nv_fp8_e4m3 *q,
                                      float *scales, __nv_bfloat16 *y) {
  awaitPriorKernels();
  int row = blockIdx.x;
  const __nv_bfloat16 *xr = x + size_t(row) * k;
  float sum = 0.f;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    float v = __bfloat162float(xr[i]);
    sum += v * v;
  }
  __shared__ float partial[32];
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  sum = warpSum(sum);
  if (lane == 0)
    partial[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    float s = lane < blockDim.x / 32 ? partial[lane] : 0.f;
    s = warpSum(s);
    if (lane == 0)
      partial[0] = s;
  }
  __syncthreads();
  float rstd = rsqrtf(partial[0] / k + eps);
  int blocksPerRow = k / kQuantBlock, warps = blockDim.x / 32;
  for (int blk = warp; blk < blocksPerRow; blk += warps) {
    int col = blk * kQuantBlock + lane * 4;
    float v[4];
    for (int i = 0; i < 4; ++i) {
      __nv_bfloat16 n = __float2bfloat16(__bfloat162float(xr[col + i]) * rstd *
                                         __bfloat162float(gamma[col + i]));
      if (y)
        y[size_t(row) * k + col + i] = n;
      v[i] = __bfloat162float(n);
    }
    quantizeBlock(v, q + size_t(row) * k + blk * kQuantBlock,
                  scales + size_t(blk) * m + row, lane);
  }
}

} // namespace

template <typename T, typename U = float>
static cudaError_t quantizeRows(const T *x, const U *up, int m, int kIn, int k,
                                __nv_fp8_e4m3 *q, float *scales,
                                cudaStream_t stream) {
  if (m <= 0 || k <= 0 || k % kQuantBlock != 0 || kIn <= 0 || kIn > k)
    return cudaErrorInvalidValue;
  // Rows in fours from 64 on (a prefill's thousands: a warp's loads of a
  // single block were too few to keep the memory busy), else one a warp.
  constexpr int kManyRows = 64, kRowsPerWarp = 4;
  const int rows = m >= kManyRows ? kRowsPerWarp : 1;
  const long long warps =
      (long long)((m + rows - 1) / rows) * (k / kQuantBlock);
  const int threads = 256;
  const long long blocks = (warps * 32 + threads - 1) / threads;
  return rows == 1
             ? launchOverlapped(quantizeRowsKernel<T, U, 1>, unsigned(blocks),
                                threads, 0, stream, x, up, m, kIn, k, q, scales)
             : launchOverlapped(quantizeRowsKernel<T, U, kRowsPerWarp>,
                                unsigned(blocks), threads, 0, stream, x, up, m,
                                kIn, k, q, scales);
}

cudaError_t melt::rt::cuda::quantizeRowsFp8(const __nv_bfloat16 *x, int m,
                                            int k, __nv_fp8_e4m3 *q,
                                            float *scales,
                                            cudaStream_t stream) {
  return quantizeRows(x, static_cast<const float *>(nullptr), m, k, k, q,
                      scales, stream);
}

cudaError_t melt::rt::cuda::quantizeRowsFp8(const float *x, int m, int k,
                                            __nv_fp8_e4m3 *q, float *scales,
                                            cudaStream_t stream) {
  return quantizeRows(x, static_cast<const float *>(nullptr), m, k, k, q,
                      scales, stream);
}

cudaError_t melt::rt::cuda::quantizeRowsFp8Padded(const float *x, int m,
                                                  int kIn, int k,
                                                  __nv_fp8_e4m3 *q,
                                                  float *scales,
                                                  cudaStream_t stream) {
  return quantizeRows(x, static_cast<const float *>(nullptr), m, kIn, k, q,
                      scales, stream);
}

cudaError_t melt::rt::cuda::siluMulQuantizeRowsFp8Padded(
    const float *gate, const float *up, int m, int kIn, int k, __nv_fp8_e4m3 *q,
    float *scales, cudaStream_t stream) {
  return quantizeRows(gate, up, m, kIn, k, q, scales, stream);
}

cudaError_t melt::rt::cuda::rmsNormQuantizeFp8(
    const __nv_bfloat16 *x, const __nv_bfloat16 *gamma, float eps, int m, int k,
    __nv_fp8_e4m3 *q, float *scales, __nv_bfloat16 *y, cudaStream_t stream) {
  if (m <= 0 || k <= 0 || k % kQuantBlock != 0)
    return cudaErrorInvalidValue;
  launchOverlapped(rmsNormQuantizeKernel, m, 256, 0, stream, x, gamma, eps, m,
                   k, q, scales, y);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::siluMulQuantizeRowsFp8Padded(
    const __nv_bfloat16 *gate, const __nv_bfloat16 *up, int m, int kIn, int k,
    __nv_fp8_e4m3 *q, float *scales, cudaStream_t stream) {
  return quantizeRows(gate, up, m, kIn, k, q, scales, stream);
}
