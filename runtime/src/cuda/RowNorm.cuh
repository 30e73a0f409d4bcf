//===- RowNorm.cuh - one row's RMSNorm by a block of threads ----*- CUDA
//-*-===//
//
// The RMSNorm of rmsNorm / addRmsNorm, in one place for the kernels that
// normalize a row: the norm kernel and MLA's latent append (which writes
// the normalized latent into its cache row). Their values must agree bit
// for bit (the executor does the append's norm in the append's kernel).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_ROWNORM_CUH
#define MELT_RUNTIME_CUDA_ROWNORM_CUH

#include "cuda/DependentLaunch.cuh"
#include "cuda/OperandAccess.cuh"
#include "cuda/WarpReduce.cuh"

#include <cuda_bf16.h>

namespace melt::rt::cuda {

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

/// The RMSNorm of the row of `cols` values at `base` of x (with kAdd, of x
/// + b, written to sumOut), every thread of the block taking part: value c
/// times the reciprocal RMS times gamma[c] goes to write(c, value). Waits
/// for the kernel ahead (awaitPriorKernels) once the gammas of a row held
/// in registers are loaded (they are weights).
template <bool kAdd, class Write>
__device__ __forceinline__ void normRow(Operand x, Operand b, Result sumOut,
                                        Operand gamma, float eps, int cols,
                                        size_t base, Write write) {
  const bool inRegisters = cols <= kNormBatch * kNormThreads;
  float kept[kNormBatch], g[kNormBatch];
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
        write(c, kept[u] * scale * g[u]);
    }
  }
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_ROWNORM_CUH
