//===- Elementwise.cu - row-wise and elementwise kernels (CUDA) -----------===//
#include "cuda/Elementwise.h"

#include "cuda/DependentLaunch.cuh"
#include "cuda/OperandAccess.cuh"
#include "cuda/Silu.cuh"
#include "cuda/WarpReduce.cuh"

#include <cuda_bf16.h>

using namespace melt::rt::cuda;

namespace {

/// One block of 256 threads per row. A row of up to 8 x 256 values is
/// read once into registers, every load in flight at once (a loop that
/// loads one value at a time waits a memory latency per value); longer
/// rows in such batches, twice.
constexpr int kNormThreads = 256, kNormBatch = 8;

/// A row's value: x, or with kAdd the residual sum x + b as add() stores
/// it in `sum` (rounded to BF16 where sum is BF16), written once.
template <bool kAdd>
__device__ __forceinline__ float rowValue(Operand x, Operand b, Result sum,
                                          size_t i, bool write) {
  if constexpr (!kAdd) {
    return load(x, i);
  } else {
    float v = load(x, i) + load(b, i);
    if (write)
      store(sum, i, v);
    return sum.bf16 ? __bfloat162float(__float2bfloat16(v)) : v;
  }
}

/// With kAdd, the residual add before the norm in the same pass
/// (Device::addRmsNorm).
template <bool kAdd>
__global__ void __launch_bounds__(kNormThreads)
    rmsNormKernel(Operand x, Operand b, Result sumOut, Operand gamma, float eps,
                  int cols, Result y) {
  size_t base = size_t(blockIdx.x) * cols;
  const bool inRegisters = cols <= kNormBatch * kNormThreads;
  float kept[kNormBatch], g[kNormBatch];
  // A row held in registers: its gammas load before the kernel ahead has
  // ended (they are weights), not after the reduction.
  if (inRegisters)
#pragma unroll
    for (int u = 0; u < kNormBatch; ++u) {
      int c = u * kNormThreads + threadIdx.x;
      g[u] = c < cols ? load(gamma, c) : 0.f;
    }
  awaitPriorKernels();
  float sum = 0.f;
  for (int start = 0; start < cols; start += kNormBatch * kNormThreads) {
#pragma unroll
    for (int u = 0; u < kNormBatch; ++u) {
      int c = start + u * kNormThreads + threadIdx.x;
      kept[u] = c < cols ? rowValue<kAdd>(x, b, sumOut, base + c, true) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kNormBatch; ++u)
      sum += kept[u] * kept[u];
  }
  sum = warpSum(sum);
  __shared__ float partial[32];
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0)
    partial[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    float s = lane < kNormThreads / 32 ? partial[lane] : 0.f;
    s = warpSum(s);
    if (lane == 0)
      partial[0] = s;
  }
  __syncthreads();
  float scale = rsqrtf(partial[0] / cols + eps);
  for (int start = 0; start < cols; start += kNormBatch * kNormThreads) {
    if (!inRegisters)
#pragma unroll
      for (int u = 0; u < kNormBatch; ++u) {
        int c = start + u * kNormThreads + threadIdx.x;
        g[u] = c < cols ? load(gamma, c) : 0.f;
        kept[u] =
            c < cols ? rowValue<kAdd>(x, b, sumOut, base + c, false) : 0.f;
      }
#pragma unroll
    for (int u = 0; u < kNormBatch; ++u) {
      int c = start + u * kNormThreads + threadIdx.x;
      if (c < cols)
        store(y, base + c, kept[u] * scale * g[u]);
    }
  }
}

__global__ void binaryKernel(Binary op, Operand a, Operand b, size_t count,
                             Result y) {
  awaitPriorKernels();
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count;
       i += size_t(gridDim.x) * blockDim.x) {
    float u = load(a, i), v = load(b, i);
    store(y, i, op == Binary::Add ? u + v : siluTimes(u, v));
  }
}

__global__ void convertKernel(Operand x, size_t count, Result y) {
  awaitPriorKernels();
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count;
       i += size_t(gridDim.x) * blockDim.x)
    store(y, i, load(x, i));
}

__global__ void roundToBf16Kernel(float *x, size_t count) {
  awaitPriorKernels();
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count;
       i += size_t(gridDim.x) * blockDim.x)
    x[i] = __bfloat162float(__float2bfloat16(x[i]));
}

/// Blocks of 256 threads for an elementwise kernel over `count` values
/// (grid-stride loops beyond 8192 blocks).
unsigned elementwiseBlocks(size_t count) {
  const size_t blocks = (count + 255) / 256;
  return unsigned(blocks < 8192 ? blocks : 8192);
}

} // namespace

cudaError_t melt::rt::cuda::roundToBf16(float *x, size_t count,
                                        cudaStream_t stream) {
  if (count == 0)
    return cudaSuccess;
  return launchOverlapped(roundToBf16Kernel, elementwiseBlocks(count), 256, 0,
                          stream, x, count);
}

cudaError_t melt::rt::cuda::convert(Operand x, size_t count, Result y,
                                    cudaStream_t stream) {
  if (count == 0)
    return cudaSuccess;
  return launchOverlapped(convertKernel, elementwiseBlocks(count), 256, 0,
                          stream, x, count, y);
}

cudaError_t melt::rt::cuda::rmsNorm(Operand x, Operand gamma, float eps,
                                    int rows, int cols, Result y,
                                    cudaStream_t stream) {
  if (rows <= 0 || cols <= 0)
    return rows == 0 ? cudaSuccess : cudaErrorInvalidValue;
  return launchOverlapped(rmsNormKernel<false>, rows, kNormThreads, 0, stream,
                          x, x, Result{nullptr, false}, gamma, eps, cols, y);
}

cudaError_t melt::rt::cuda::addRmsNorm(Operand a, Operand b, Operand gamma,
                                       float eps, int rows, int cols,
                                       Result sum, Result y,
                                       cudaStream_t stream) {
  if (rows <= 0 || cols <= 0)
    return rows == 0 ? cudaSuccess : cudaErrorInvalidValue;
  return launchOverlapped(rmsNormKernel<true>, rows, kNormThreads, 0, stream, a,
                          b, sum, gamma, eps, cols, y);
}

cudaError_t melt::rt::cuda::binary(Binary op, Operand a, Operand b,
                                   size_t count, Result y,
                                   cudaStream_t stream) {
  if (count == 0)
    return cudaSuccess;
  return launchOverlapped(binaryKernel, elementwiseBlocks(count), 256, 0,
                          stream, op, a, b, count, y);
}
