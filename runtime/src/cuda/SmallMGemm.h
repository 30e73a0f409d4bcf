//===- SmallMGemm.h - products of a few rows with wide weights --*- C++ -*-===//
//
// y[M, N] = x[M, K] W[N, K]^T for M <= kSmallMMaxRows (decode steps of a few
// sequences), x in F32, W in BF16 or F32, y F32 or BF16. Such a product reads
// each weight once and does M multiply-adds with it: it is a copy of W, and
// cuBLASLt streams W at a quarter to a third of the copy bandwidth there
// (H200, BASELINES.md). Here warps stream W rows with 16-byte loads, several
// in flight, a row split over up to 8 warps where N is small, and take x
// through L1. With BF16 weights x is rounded to BF16 first (as by
// convert() + GemmRunner::bf16), in-kernel. A batch-1 step's row that an
// RMSNorm makes can be normalized by the product itself, in every block
// (smallMGemmAfterNorm): the norm's own kernel and its link in the chain
// of dependent kernels left out.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_SMALLMGEMM_H
#define MELT_RUNTIME_CUDA_SMALLMGEMM_H

#include "cuda/Elementwise.h"

#include <cuda_runtime.h>

namespace melt::rt::cuda {

constexpr int kSmallMMaxRows = 8;

/// Whether smallMGemm takes the shape: M in [1, kSmallMMaxRows], K a
/// multiple of 8 (one 16-byte load), x and W 16-byte aligned.
bool smallMGemmFits(const float *x, const void *w, bool bf16Weights, int m,
                    int k);

/// Whether smallMGemm beats cuBLASLt (convert + BF16 GEMM) on the shape, as
/// measured on the H200 (bench/cuda/decode_kernels.cu): one row always;
/// more while rows x weight bytes stay within 40 MB. Each row beyond the
/// first reads x again through L1, which bounds it at 4-8 rows on large
/// weights, where cuBLASLt's tensor cores stream W once for all rows.
bool smallMGemmPays(int m, int n, int k, bool bf16Weights);

/// `multiprocessors` sizes the grid (warps enough to keep loads in flight).
cudaError_t smallMGemm(const float *x, const void *w, bool bf16Weights, int m,
                       int n, int k, Result y, int multiprocessors,
                       cudaStream_t stream);

/// y[N] (F32) = silu(x wGate^T) * (x wUp^T) of one row x[K] (an MLP's gate,
/// up and SiLU-mul): each warp streams its part of a gate row and of the up
/// row together, both rows' loads in flight, each sum in smallMGemm's
/// order (the same split), rounded to BF16 where `roundProducts`, then
/// SiLU-mul'ed as the elementwise kernel does: the values of smallMGemm
/// twice, then Binary::SiluMul, bit for bit. Fits where smallMGemm at one
/// row fits both weights.
cudaError_t smallMGemmSiluMulOfPair(const float *x, const void *wGate,
                                    const void *wUp, bool bf16Weights, int n,
                                    int k, bool roundProducts, float *y,
                                    int multiprocessors, cudaStream_t stream);

/// An RMSNorm of one row (of x, or of x + b where b has data, stored to
/// `sum`) into y, whose value a product reads next.
struct RowNormOperands {
  Operand x, b;
  Result sum;
  Operand gamma;
  float eps;
  Result y;
};

/// The widest row smallMGemmAfterNorm normalizes (in shared memory).
constexpr size_t kMaxNormedRowBytes = 48u << 10;

/// Whether smallMGemmAfterNorm takes a row of k values and weight w (the
/// norm's operands, F32 or BF16, are read a value at a time: any
/// alignment).
bool smallMGemmAfterNormFits(const void *w, bool bf16Weights, int k);

/// The blocks smallMGemmAfterNorm launches (each normalizes the row).
int smallMGemmAfterNormBlocks(int n, int k, bool bf16Weights,
                              int multiprocessors);

/// The norm (rmsNorm / addRmsNorm of one row of k values, the same bits,
/// y and sum written) and then smallMGemm of its y, in one kernel: each
/// block normalizes the row itself before its product rows, where the
/// norm's own kernel and the launch between cost a batch-1 step more.
cudaError_t smallMGemmAfterNorm(const RowNormOperands &norm, const void *w,
                                bool bf16Weights, int n, int k, Result y,
                                int multiprocessors, cudaStream_t stream);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_SMALLMGEMM_H
