//===- Elementwise.cu - row-wise and elementwise kernels (CUDA) -----------===//
#include "cuda/Elementwise.h"

#include "cuda/OperandAccess.cuh"

#include <cuda_bf16.h>

using namespace melt::rt::cuda;

namespace {

/// One block of 256 threads per row.
__global__ void rmsNormKernel(Operand x, Operand gamma, float eps, int cols,
                              Result y) {
  size_t base = size_t(blockIdx.x) * cols;
  float sum = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = load(x, base + c);
    sum += v * v;
  }
  for (int offset = 16; offset > 0; offset >>= 1)
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  __shared__ float partial[32];
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0)
    partial[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    float s = lane < blockDim.x / 32 ? partial[lane] : 0.f;
    for (int offset = 16; offset > 0; offset >>= 1)
      s += __shfl_xor_sync(0xffffffffu, s, offset);
    if (lane == 0)
      partial[0] = s;
  }
  __syncthreads();
  float scale = rsqrtf(partial[0] / cols + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x)
    store(y, base + c, load(x, base + c) * scale * load(gamma, c));
}

__global__ void binaryKernel(Binary op, Operand a, Operand b, size_t count,
                             Result y) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count;
       i += size_t(gridDim.x) * blockDim.x) {
    float u = load(a, i), v = load(b, i);
    store(y, i, op == Binary::Add ? u + v : u / (1.f + __expf(-u)) * v);
  }
}

__global__ void convertKernel(Operand x, size_t count, Result y) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count;
       i += size_t(gridDim.x) * blockDim.x)
    store(y, i, load(x, i));
}

} // namespace

cudaError_t melt::rt::cuda::convert(Operand x, size_t count, Result y,
                                    cudaStream_t stream) {
  if (count == 0)
    return cudaSuccess;
  size_t blocks = (count + 255) / 256;
  convertKernel<<<unsigned(blocks < 8192 ? blocks : 8192), 256, 0, stream>>>(
      x, count, y);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::rmsNorm(Operand x, Operand gamma, float eps,
                                    int rows, int cols, Result y,
                                    cudaStream_t stream) {
  if (rows <= 0 || cols <= 0)
    return rows == 0 ? cudaSuccess : cudaErrorInvalidValue;
  rmsNormKernel<<<rows, 256, 0, stream>>>(x, gamma, eps, cols, y);
  return cudaGetLastError();
}

cudaError_t melt::rt::cuda::binary(Binary op, Operand a, Operand b,
                                   size_t count, Result y,
                                   cudaStream_t stream) {
  if (count == 0)
    return cudaSuccess;
  size_t blocks = (count + 255) / 256;
  binaryKernel<<<unsigned(blocks < 8192 ? blocks : 8192), 256, 0, stream>>>(
      op, a, b, count, y);
  return cudaGetLastError();
}
