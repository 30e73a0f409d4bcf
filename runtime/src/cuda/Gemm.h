//===- Gemm.h - GEMMs of the CUDA device through cuBLASLt -------*- C++ -*-===//
//
// y[M, N] = x[M, K] W[N, K]^T, row-major, as every projection of the model:
//
//  - bf16: x and W in BF16, FP32 accumulation, y in BF16 or FP32;
//  - f32: FP32 throughout (the fp32 precision policy);
//  - fp8 block-scaled (DeepSeek-V3): x in FP8 e4m3 with one FP32 scale per
//    1x128 block of each row (VEC128_32F, stored [K/128, M]: the scales
//    of one block column side by side), W in FP8 e4m3 with one FP32
//    scale per 128x128 block (BLK128x128_32F, the checkpoint's
//    weight_scale_inv as stored: [ceil(N/128), K/128] row-major), FP32
//    accumulation, y in BF16. Scales multiply: value = fp8 * scale.
//
// cuBLASLt is column-major: row-major W[N, K] is column-major [K, N], so
// it is operand A transposed, x operand B, and y column-major [N, M]; the
// "TN" form the FP8 tensor cores require. Scale pointers are set before
// cuBLASLt chooses an algorithm (it refuses block scaling without them).
//
// FP8 GEMMs of at most 8 tokens (decode) run melt's own kernel
// (Fp8SmallM.cu): cuBLASLt 13.1 has no block-scaled algorithm for M = 1
// and streams W at a fifth to a half of the copy bandwidth there. From 9
// to 16 tokens (setSplitKRows) the split-K wgmma kernel (Fp8SplitKWgmma.cu)
// takes them: cuBLASLt reads the narrow weights at a fifth to two thirds
// of the copy bandwidth there. Nor has cuBLASLt an algorithm for M not a
// multiple of 16: those run on copies padded with zero rows (the copies
// cost M x (K + N) bytes, small beside the weight).
//
// The algorithm for a shape is chosen once (cuBLASLt's heuristic, the
// best that runs) and cached; the workspace is allocated once.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_GEMM_H
#define MELT_RUNTIME_CUDA_GEMM_H

#include "cuda/Fp8SmallM.h"

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

namespace melt::rt::cuda {

/// What a CUDA call returned, with the call's name: empty when it worked.
struct CudaStatus {
  std::string error;
  explicit operator bool() const { return !error.empty(); }
  static CudaStatus ok() { return {}; }
};

class GemmRunner {
public:
  /// One runner per device and stream; `workspaceBytes` of scratch for
  /// cuBLASLt's split-K algorithms.
  static CudaStatus create(cudaStream_t stream,
                           std::unique_ptr<GemmRunner> &out,
                           size_t workspaceBytes = 32u << 20);
  ~GemmRunner();

  CudaStatus bf16(const __nv_bfloat16 *x, const __nv_bfloat16 *w, void *y,
                  bool yF32, int m, int n, int k);
  /// FP32 throughout (no TF32): the reference-precision path.
  CudaStatus f32(const float *x, const float *w, float *y, int m, int n, int k);

  /// `xScales`: [K/128, M] row-major (one per 128 values of a row);
  /// `wScales`: [ceil(N/128), K/128] row-major. K must be a multiple of
  /// 128 and N of 16; where cuBLASLt takes it (beyond the small-M limit and
  /// the split-K rows), K/128 of 4 as well (true of every DeepSeek-V3
  /// projection).
  CudaStatus fp8BlockScaled(const __nv_fp8_e4m3 *x, const float *xScales,
                            const __nv_fp8_e4m3 *w, const float *wScales,
                            __nv_bfloat16 *y, int m, int n, int k);

  /// y F32 = x F32 W^T for W FP8 with its block scales when the small-M
  /// kernel takes M (at most 8 and this runner's small-M limit): x
  /// quantized in the kernel (fp8SmallMFromF32); silu(x) * up where `up`
  /// is not null. x's rows may hold fewer values than W's (kIn < k: W
  /// stored with its K padded; zeros beyond). `handled` says whether it
  /// ran; otherwise quantize, fp8BlockScaled and widen.
  CudaStatus fp8FromF32(const float *x, const float *up, int kIn,
                        const __nv_fp8_e4m3 *w, const float *wScales, float *y,
                        int m, int n, int k, bool &handled);

  /// fp8FromF32 of one row that an RMSNorm (or an add and norm) makes
  /// first, the norm in the product's kernel (fp8FewTokensAfterNorm: the
  /// norm's y and sum stored too), where fp8FromF32 would run the row on
  /// the few-tokens kernel with its weights in registers; `handled` says
  /// whether it ran (else the caller runs the norm, then fp8FromF32).
  CudaStatus fp8AfterNorm(const RowNormOperands &norm, int kIn,
                          const __nv_fp8_e4m3 *w, const float *wScales,
                          float *y, int n, int k, bool &handled);

  /// Batches of y_b[M, N] = x_b[M, K] w_b, every operand FP32 and
  /// row-major with its own row and batch strides (elements), w_b stored
  /// [K, N] or, with wNK, [N, K] (then y_b = x_b w_b^T); multiplied on the
  /// tensor cores in TF32 with FP32 accumulation: MLA's per-head products
  /// (W_UK into the queries, W_UV onto the attention's latent output).
  struct Batched {
    int m = 0, n = 0, k = 0, batches = 0;
    bool wNK = false;
    int64_t xRow = 0, xBatch = 0, wBatch = 0, yRow = 0, yBatch = 0;
  };
  CudaStatus tf32Batched(const float *x, const float *w, float *y,
                         const Batched &shape);
  /// The same with BF16 operands and a BF16 result (FP32 accumulation):
  /// the decompressed MLA's K and V for its BF16 attention.
  CudaStatus bf16Batched(const __nv_bfloat16 *x, const __nv_bfloat16 *w,
                         __nv_bfloat16 *y, const Batched &shape);
  cudaStream_t stream() const { return stream_; }
  /// FP8 GEMMs of at most this many tokens run the small-M kernel (0: all
  /// through cuBLASLt, for comparison; at most kFp8SmallMMax).
  void setSmallMLimit(int limit) { smallMLimit_ = limit; }
  /// FP8 GEMMs of more tokens than the small-M limit and at most `rows`
  /// (up to kFp8SplitKWgmmaMax) run the split-K wgmma kernel
  /// (Fp8SplitKWgmma.cu) where it takes the operands, the rest cuBLASLt; 0:
  /// none. The default, MELT_CUDA_FP8_SPLIT_K_ROWS or 16: at 16 tokens it
  /// beat cuBLASLt at every DeepSeek-V3 shape and mini's batch-16 decode by
  /// 5%; at 64 it lost mini's batch-64 decode by 11%
  /// (bench/results/fp8_split_k_wgmma_s28_h200.txt).
  void setSplitKRows(int rows) { splitKRows_ = rows; }
  /// Whether fp8FromF32 may take m rows (its kernel quantizing x itself).
  bool quantizesF32Rows(int m) const {
    return m >= 1 && m <= std::min(smallMLimit_, kFp8SmallMFromF32Max);
  }
  /// Shapes whose algorithm is cached.
  size_t cachedShapes() const { return plans_.size(); }

private:
  GemmRunner() = default;
  struct Plan;
  enum class Kind { BF16ToBF16, BF16ToF32, F32, FP8Block };
  using Key = std::tuple<Kind, int, int, int>;
  /// cuBLASLt wants the scale pointers of a block-scaled GEMM before it
  /// chooses an algorithm.
  CudaStatus plan(Kind kind, int m, int n, int k, Plan *&out,
                  const void *weightScales = nullptr,
                  const void *inputScales = nullptr);
  CudaStatus run(Plan &plan, const void *weight, const void *input, void *d,
                 const void *weightScales, const void *inputScales);

  cublasLtHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
  /// The small-M kernel's tile counters (kept zero between calls), then
  /// scratch that cuBLASLt and the small-M kernel use in turn.
  void *workspace_ = nullptr;
  size_t workspaceBytes_ = 0;
  void *cublasWorkspace() const {
    return static_cast<char *>(workspace_) + kFp8SmallMCounterBytes;
  }
  size_t cublasWorkspaceBytes() const {
    return workspaceBytes_ - kFp8SmallMCounterBytes;
  }
  int smCount_ = 132, smallMLimit_ = 8;
  int splitKRows_ = 16;
  /// Zero-padded copies of x, its scales and y for M not a multiple of 16.
  void *staging_ = nullptr;
  size_t stagingBytes_ = 0;
  std::map<Key, std::unique_ptr<Plan>> plans_;
  /// Shape, strides and whether BF16 (else TF32).
  using BatchedKey = std::tuple<int, int, int, int, bool, int64_t, int64_t,
                                int64_t, int64_t, int64_t, bool>;
  std::map<BatchedKey, std::unique_ptr<Plan>> batchedPlans_;
  CudaStatus batched(const void *x, const void *w, void *y, const Batched &g,
                     bool bf16);
};

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_GEMM_H
