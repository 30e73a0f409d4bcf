//===- Fp8SmallM.h - FP8 block-scaled GEMM for few tokens -------*- C++ -*-===//
//
// y[M, N] = x[M, K] W[N, K]^T in BF16 for M <= kFp8SmallMMax, with the same
// operands as GemmRunner::fp8BlockScaled (x FP8 with [K/128, M] scales, W
// FP8 with [ceil(N/128), K/128] scales): tensor cores (mma.sync e4m3)
// streaming W at memory speed, split over K. See Fp8SmallM.cu.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_FP8SMALLM_H
#define MELT_RUNTIME_CUDA_FP8SMALLM_H

#include "cuda/SmallMGemm.h"

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace melt::rt::cuda {

constexpr int kFp8SmallMMax = 64;
/// The workspace starts with one counter per 128-row tile of W (N up to
/// 256K); they must be zero before the first launch and are left zero.
constexpr size_t kFp8SmallMCounterBytes = 8192;

/// Scratch for the partial sums when the whole split fits.
size_t fp8SmallMWorkspaceBytes(int m, int n, int k, int smCount);

/// N must be a multiple of 16 and K of 128; the split over K shrinks to fit
/// `workspaceBytes` (at least the counters and M * N * 4).
cudaError_t fp8SmallM(const __nv_fp8_e4m3 *x, const float *xScales,
                      const __nv_fp8_e4m3 *w, const float *wScales,
                      __nv_bfloat16 *y, int m, int n, int k, void *workspace,
                      size_t workspaceBytes, int smCount, cudaStream_t stream);

/// The same product from F32 x [M, kIn] (quantized in the kernel in 1 x
/// 128 blocks, as quantizeRowsFp8 does; zeros from kIn to K, for a weight
/// stored with its K padded) into F32 y (the BF16 result widened), for M
/// <= kFp8SmallMFromF32Max: one launch for a decode step's FP8 projection.
/// Where `up` is not null the product is of silu(x) * up (an MLP's down
/// projection with its SiLU-mul). x and up must be 16-byte aligned and
/// kIn a multiple of 4.
constexpr int kFp8SmallMFromF32Max = 8;
cudaError_t fp8SmallMFromF32(const float *x, const float *up, int kIn,
                             const __nv_fp8_e4m3 *w, const float *wScales,
                             float *y, int m, int n, int k, void *workspace,
                             size_t workspaceBytes, int smCount,
                             cudaStream_t stream);

/// Up to kFp8FewTokensMax tokens, the same products (fp8SmallM's, and
/// fp8SmallMFromF32's from F32 x) in one pass without scratch: a block
/// per 16 rows of W at a time, its warps splitting K (Fp8FewTokens.cu).
/// Fits where x as FP8 (M x K bytes) fits its shared memory (K up to about
/// 12K at 8 tokens); pays for weights of up to about 24 MB where x's
/// staging is short (at most 16 (token, K block) pairs a warp), as
/// measured on the H200 (see fp8FewTokensPay). fp8SmallM and
/// fp8SmallMFromF32 take it where it pays; smCount is the GPU's
/// multiprocessors (a block each).
constexpr int kFp8FewTokensMax = 8;
bool fp8FewTokensFit(int m, int n, int k);
bool fp8FewTokensPay(int m, int n, int k);
cudaError_t fp8FewTokens(const __nv_fp8_e4m3 *x, const float *xScales,
                         const __nv_fp8_e4m3 *w, const float *wScales,
                         __nv_bfloat16 *y, int m, int n, int k, int smCount,
                         cudaStream_t stream);
cudaError_t fp8FewTokensFromF32(const float *x, const float *up, int kIn,
                                const __nv_fp8_e4m3 *w, const float *wScales,
                                float *y, int m, int n, int k, int smCount,
                                cudaStream_t stream);

/// The few-tokens products with the weights loaded straight into registers
/// (Fp8FewTokensRegisters.cu): no ring in shared memory, so that several
/// blocks share a multiprocessor. fp8FewTokens and fp8FewTokensFromF32 take
/// it at one token unless MELT_CUDA_FP8_FEW_TOKENS_REGISTERS=0. The same
/// arithmetic in the same order as the ring's: the same values bit for
/// bit.
bool fp8FewTokensInRegistersFit(int m, int n, int k);
/// Whether fp8FewTokens / fp8FewTokensFromF32 take it for this shape.
bool fp8FewTokensTakeRegisters(int m, int n, int k);
cudaError_t fp8FewTokensInRegisters(const __nv_fp8_e4m3 *x,
                                    const float *xScales,
                                    const __nv_fp8_e4m3 *w,
                                    const float *wScales, __nv_bfloat16 *y,
                                    int m, int n, int k, int smCount,
                                    cudaStream_t stream);
cudaError_t fp8FewTokensInRegistersFromF32(const float *x, const float *up,
                                           int kIn, const __nv_fp8_e4m3 *w,
                                           const float *wScales, float *y,
                                           int m, int n, int k, int smCount,
                                           cudaStream_t stream);

/// fp8FewTokensInRegistersFromF32 of one row that an RMSNorm (or an add and
/// norm: norm.b given) makes first, as smallMGemmAfterNorm does for BF16
/// weights: every block normalizes the row (kIn values) itself with the
/// norm kernel's arithmetic, block 0 also storing norm.y and norm.sum, then
/// quantizes and multiplies it. The same values, bit for bit, as the norm
/// kernel, then fp8FewTokensInRegistersFromF32.
bool fp8FewTokensAfterNormFit(int n, int kIn, int k);
cudaError_t fp8FewTokensAfterNorm(const RowNormOperands &norm, int kIn,
                                  const __nv_fp8_e4m3 *w, const float *wScales,
                                  float *y, int n, int k, int smCount,
                                  cudaStream_t stream);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_FP8SMALLM_H
