//===- Quantize.h - FP8 activation quantization (CUDA) ----------*- C++ -*-===//
//
// DeepSeek-V3's activation format for FP8 GEMMs: each row of a [M, K] BF16
// tensor in blocks of 128 values, one FP32 scale per block (amax / 448, so
// the block's largest value lands on e4m3's largest finite value), values
// stored as e4m3 (saturated). Scales are [K/128, M] row-major (the rows'
// scales of one block column side by side: cuBLASLt's VEC128_32F layout,
// what GemmRunner::fp8BlockScaled reads). K must be a multiple of 128.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_QUANTIZE_H
#define MELT_RUNTIME_CUDA_QUANTIZE_H

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

namespace melt::rt::cuda {

constexpr int kQuantBlock = 128;

cudaError_t quantizeRowsFp8(const __nv_bfloat16 *x, int m, int k,
                            __nv_fp8_e4m3 *q, float *scales,
                            cudaStream_t stream);
cudaError_t quantizeRowsFp8(const float *x, int m, int k, __nv_fp8_e4m3 *q,
                            float *scales, cudaStream_t stream);

/// The same for x's rows of kIn values (kIn <= k) as rows of k, the
/// values beyond kIn zeros (their blocks get scale 1): x for a weight whose
/// K was padded to the FP8 GEMMs' multiple (k a multiple of 128).
cudaError_t quantizeRowsFp8Padded(const float *x, int m, int kIn, int k,
                                  __nv_fp8_e4m3 *q, float *scales,
                                  cudaStream_t stream);
/// The same for silu(gate) * up (SiLU-mul fused with the quantization:
/// the values of binary(SiluMul) then quantizeRowsFp8Padded).
cudaError_t siluMulQuantizeRowsFp8Padded(const float *gate, const float *up,
                                         int m, int kIn, int k,
                                         __nv_fp8_e4m3 *q, float *scales,
                                         cudaStream_t stream);
/// The same of BF16 gate and up rows (FP8 products' outputs, read as
/// they are: the values their widened F32 copies would hold).
cudaError_t siluMulQuantizeRowsFp8Padded(const __nv_bfloat16 *gate,
                                         const __nv_bfloat16 *up, int m,
                                         int kIn, int k, __nv_fp8_e4m3 *q,
                                         float *scales, cudaStream_t stream);

/// y = x / rms(x) * gamma per row (FP32 math, eps inside the root), rounded
/// to BF16 as the BF16 model would, then quantized as above. `y` (BF16
/// normalized rows) is also written when not null: the residual stream and
/// BF16 consumers read it.
cudaError_t rmsNormQuantizeFp8(const __nv_bfloat16 *x,
                               const __nv_bfloat16 *gamma, float eps, int m,
                               int k, __nv_fp8_e4m3 *q, float *scales,
                               __nv_bfloat16 *y, cudaStream_t stream);

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_QUANTIZE_H
