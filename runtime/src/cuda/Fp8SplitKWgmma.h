//===- Fp8SplitKWgmma.h - FP8 GEMM of up to 64 tokens on wgmma --*- C++ -*-===//
//
// y[M, N] = x[M, K] W[N, K]^T in BF16 for M <= kFp8SplitKWgmmaMax, with the
// operands of GemmRunner::fp8BlockScaled (x FP8 with [K/128, M] scales, W
// FP8 with [ceil(N/128), K/128] scales): W streamed by TMA onto the FP8
// tensor cores (wgmma, W as the 64-row operand, the tokens as its N), K
// split over the blocks of a thread-block cluster and the partial sums
// added through distributed shared memory. See Fp8SplitKWgmma.cu.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_FP8SPLITKWGMMA_H
#define MELT_RUNTIME_CUDA_FP8SPLITKWGMMA_H

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

namespace melt::rt::cuda {

constexpr int kFp8SplitKWgmmaMax = 64;

/// Whether the kernel takes the shape and operands: 1 <= M <= 64, K a
/// multiple of 128, N of 16, x and W 16-byte aligned, y 8-byte aligned.
bool fp8SplitKWgmmaTakes(const void *x, const void *w, const void *y, int m,
                         int n, int k);

/// How a product is laid over the GPU: K ranges a 128-row tile of W (the
/// blocks of its cluster) and blocks an SM (each block's ring of stages
/// takes that share of an SM's shared memory).
struct Fp8SplitKPlan {
  int splits = 1, blocksPerSm = 2;
};

/// The plan fp8SplitKWgmma takes where it is given none: every block
/// resident at once, the fewest K blocks streamed by the busiest SM.
Fp8SplitKPlan fp8SplitKWgmmaPlan(int m, int n, int k, int smCount);

/// The product, one launch, no scratch; the same bits every run for a
/// shape on a GPU of `smCount` multiprocessors (the plan follows from the
/// shape and smCount alone). `splits` > 0 forces the number of K ranges
/// (1 to 8, for tests) and `blocksPerSm` (2 where 0; 3 and 4 up to 32
/// tokens) the ring's size; splits 0 takes fp8SplitKWgmmaPlan's.
/// cudaErrorNotSupported, with nothing launched, where the driver makes no
/// TMA tensor maps or the GPU gives the kernel less shared memory than it
/// needs (GemmRunner then takes cuBLASLt).
cudaError_t fp8SplitKWgmma(const __nv_fp8_e4m3 *x, const float *xScales,
                           const __nv_fp8_e4m3 *w, const float *wScales,
                           __nv_bfloat16 *y, int m, int n, int k, int smCount,
                           cudaStream_t stream, int splits = 0,
                           int blocksPerSm = 0);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_FP8SPLITKWGMMA_H
