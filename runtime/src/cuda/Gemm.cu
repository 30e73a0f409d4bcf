//===- Gemm.cu - GEMMs of the CUDA device through cuBLASLt ----------------===//
#include "cuda/Gemm.h"

#include "EnvSwitch.h"

#include "cuda/Fp8SmallM.h"
#include "cuda/Fp8SplitKWgmma.h"
#include "cuda/ScratchLayout.h"

#include <algorithm>
#include <cstdio>

using namespace melt::rt::cuda;

namespace {

CudaStatus fromCublas(cublasStatus_t s, const char *what) {
  if (s == CUBLAS_STATUS_SUCCESS)
    return CudaStatus::ok();
  return {std::string(what) + ": " + cublasLtGetStatusName(s) + " (" +
          cublasLtGetStatusString(s) + ")"};
}

CudaStatus fromCuda(cudaError_t e, const char *what) {
  if (e == cudaSuccess)
    return CudaStatus::ok();
  return {std::string(what) + ": " + cudaGetErrorString(e)};
}

#define MELT_RETURN_IF_CUBLAS(call)                                            \
  do {                                                                         \
    if (CudaStatus s = fromCublas((call), #call))                              \
      return s;                                                                \
  } while (0)

} // namespace

struct GemmRunner::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool scaled = false;
  void reset() {
    if (d)
      cublasLtMatrixLayoutDestroy(d);
    if (b)
      cublasLtMatrixLayoutDestroy(b);
    if (a)
      cublasLtMatrixLayoutDestroy(a);
    if (desc)
      cublasLtMatmulDescDestroy(desc);
    desc = nullptr, a = b = d = nullptr;
  }
  ~Plan() { reset(); }
};

CudaStatus GemmRunner::create(cudaStream_t stream,
                              std::unique_ptr<GemmRunner> &out,
                              size_t workspaceBytes) {
  std::unique_ptr<GemmRunner> runner(new GemmRunner());
  runner->stream_ = stream;
  runner->splitKRows_ =
      int(envInt("MELT_CUDA_FP8_SPLIT_K_ROWS", 16, 0, kFp8SplitKWgmmaMax));
  int device = 0;
  if (cudaGetDevice(&device) == cudaSuccess)
    cudaDeviceGetAttribute(&runner->smCount_, cudaDevAttrMultiProcessorCount,
                           device);
  MELT_RETURN_IF_CUBLAS(cublasLtCreate(&runner->handle_));
  workspaceBytes = std::max<size_t>(workspaceBytes, 1u << 20);
  if (CudaStatus s = fromCuda(cudaMalloc(&runner->workspace_, workspaceBytes),
                              "cudaMalloc(gemm workspace)"))
    return s;
  runner->workspaceBytes_ = workspaceBytes;
  // The small-M kernel's tile counters start at zero.
  if (CudaStatus s =
          fromCuda(cudaMemset(runner->workspace_, 0, kFp8SmallMCounterBytes),
                   "cudaMemset(gemm workspace)"))
    return s;
  out = std::move(runner);
  return CudaStatus::ok();
}

GemmRunner::~GemmRunner() {
  plans_.clear();
  batchedPlans_.clear();
  if (staging_)
    cudaFree(staging_);
  if (workspace_)
    cudaFree(workspace_);
  if (handle_)
    cublasLtDestroy(handle_);
}

CudaStatus GemmRunner::plan(Kind kind, int m, int n, int k, Plan *&out,
                            const void *weightScales, const void *inputScales) {
  Key key{kind, m, n, k};
  auto it = plans_.find(key);
  if (it != plans_.end()) {
    out = it->second.get();
    return CudaStatus::ok();
  }
  auto p = std::make_unique<Plan>();
  const bool wide = kind == Kind::F32;
  cudaDataType_t in = kind == Kind::FP8Block ? CUDA_R_8F_E4M3
                      : wide                 ? CUDA_R_32F
                                             : CUDA_R_16BF;
  cudaDataType_t outType =
      kind == Kind::BF16ToF32 || wide ? CUDA_R_32F : CUDA_R_16BF;
  MELT_RETURN_IF_CUBLAS(
      cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t transA = CUBLAS_OP_T, transB = CUBLAS_OP_N;
  MELT_RETURN_IF_CUBLAS(cublasLtMatmulDescSetAttribute(
      p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &transA, sizeof(transA)));
  MELT_RETURN_IF_CUBLAS(cublasLtMatmulDescSetAttribute(
      p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &transB, sizeof(transB)));
  if (kind == Kind::FP8Block) {
    p->scaled = true;
    int32_t weightMode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
    int32_t inputMode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    MELT_RETURN_IF_CUBLAS(cublasLtMatmulDescSetAttribute(
        p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &weightMode,
        sizeof(int32_t)));
    MELT_RETURN_IF_CUBLAS(cublasLtMatmulDescSetAttribute(
        p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &inputMode,
        sizeof(int32_t)));
    const void *first = weightScales, *second = inputScales;
    MELT_RETURN_IF_CUBLAS(cublasLtMatmulDescSetAttribute(
        p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &first, sizeof(first)));
    MELT_RETURN_IF_CUBLAS(cublasLtMatmulDescSetAttribute(
        p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &second,
        sizeof(second)));
  }
  MELT_RETURN_IF_CUBLAS(cublasLtMatrixLayoutCreate(&p->a, in, k, n, k));
  MELT_RETURN_IF_CUBLAS(cublasLtMatrixLayoutCreate(&p->b, in, k, m, k));
  MELT_RETURN_IF_CUBLAS(cublasLtMatrixLayoutCreate(&p->d, outType, n, m, n));
  cublasLtMatmulPreference_t preference = nullptr;
  MELT_RETURN_IF_CUBLAS(cublasLtMatmulPreferenceCreate(&preference));
  size_t workspaceBytes = cublasWorkspaceBytes();
  cublasLtMatmulPreferenceSetAttribute(preference,
                                       CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                       &workspaceBytes, sizeof(workspaceBytes));
  cublasLtMatmulHeuristicResult_t result{};
  int count = 0;
  cublasStatus_t found = cublasLtMatmulAlgoGetHeuristic(
      handle_, p->desc, p->a, p->b, p->d, p->d, preference, 1, &result, &count);
  cublasLtMatmulPreferenceDestroy(preference);
  if (found == CUBLAS_STATUS_SUCCESS && count > 0) {
    p->algo = result.algo;
    out = p.get();
    plans_.emplace(key, std::move(p));
    return CudaStatus::ok();
  }
  return {"cuBLASLt has no algorithm for this GEMM (M " + std::to_string(m) +
          ", N " + std::to_string(n) + ", K " + std::to_string(k) +
          "): " + cublasLtGetStatusName(found)};
}

CudaStatus GemmRunner::run(Plan &p, const void *weight, const void *input,
                           void *d, const void *weightScales,
                           const void *inputScales) {
  const void *a = weight, *b = input;
  if (p.scaled) {
    const void *aScales = weightScales, *bScales = inputScales;
    MELT_RETURN_IF_CUBLAS(cublasLtMatmulDescSetAttribute(
        p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &aScales,
        sizeof(aScales)));
    MELT_RETURN_IF_CUBLAS(cublasLtMatmulDescSetAttribute(
        p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &bScales,
        sizeof(bScales)));
  }
  const float alpha = 1.f, beta = 0.f;
  MELT_RETURN_IF_CUBLAS(cublasLtMatmul(
      handle_, p.desc, &alpha, a, p.a, b, p.b, &beta, d, p.d, d, p.d, &p.algo,
      cublasWorkspace(), cublasWorkspaceBytes(), stream_));
  return CudaStatus::ok();
}

CudaStatus GemmRunner::bf16(const __nv_bfloat16 *x, const __nv_bfloat16 *w,
                            void *y, bool yF32, int m, int n, int k) {
  if (m <= 0 || n <= 0 || k <= 0)
    return {"gemm: empty shape"};
  Plan *p = nullptr;
  if (CudaStatus s =
          plan(yF32 ? Kind::BF16ToF32 : Kind::BF16ToBF16, m, n, k, p))
    return s;
  return run(*p, w, x, y, nullptr, nullptr);
}

CudaStatus GemmRunner::f32(const float *x, const float *w, float *y, int m,
                           int n, int k) {
  if (m <= 0 || n <= 0 || k <= 0)
    return {"gemm: empty shape"};
  Plan *p = nullptr;
  if (CudaStatus s = plan(Kind::F32, m, n, k, p))
    return s;
  return run(*p, w, x, y, nullptr, nullptr);
}

CudaStatus GemmRunner::tf32Batched(const float *x, const float *w, float *y,
                                   const Batched &g) {
  return batched(x, w, y, g, /*bf16=*/false);
}

CudaStatus GemmRunner::bf16Batched(const __nv_bfloat16 *x,
                                   const __nv_bfloat16 *w, __nv_bfloat16 *y,
                                   const Batched &g) {
  return batched(x, w, y, g, /*bf16=*/true);
}

CudaStatus GemmRunner::batched(const void *x, const void *w, void *y,
                               const Batched &g, bool bf16) {
  if (g.m <= 0 || g.n <= 0 || g.k <= 0 || g.batches <= 0)
    return {"gemm: empty shape"};
  if (g.xRow < g.k || g.yRow < g.n)
    return {"gemm: rows closer than their length"};
  BatchedKey key{g.m,      g.n,      g.k,    g.batches, g.wNK, g.xRow,
                 g.xBatch, g.wBatch, g.yRow, g.yBatch,  bf16};
  auto it = batchedPlans_.find(key);
  if (it == batchedPlans_.end()) {
    // Column-major: y_b^T [N, M] = op(w_b) [N, K] x_b^T [K, M]; w_b [K, N]
    // row-major is column-major [N, K] as it is, [N, K] row-major is
    // column-major [K, N] transposed.
    auto p = std::make_unique<Plan>();
    const cudaDataType_t type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    MELT_RETURN_IF_CUBLAS(cublasLtMatmulDescCreate(
        &p->desc, bf16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32,
        CUDA_R_32F));
    cublasOperation_t transA = g.wNK ? CUBLAS_OP_T : CUBLAS_OP_N,
                      transB = CUBLAS_OP_N;
    MELT_RETURN_IF_CUBLAS(cublasLtMatmulDescSetAttribute(
        p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &transA, sizeof(transA)));
    MELT_RETURN_IF_CUBLAS(cublasLtMatmulDescSetAttribute(
        p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &transB, sizeof(transB)));
    MELT_RETURN_IF_CUBLAS(
        g.wNK ? cublasLtMatrixLayoutCreate(&p->a, type, g.k, g.n, g.k)
              : cublasLtMatrixLayoutCreate(&p->a, type, g.n, g.k, g.n));
    MELT_RETURN_IF_CUBLAS(
        cublasLtMatrixLayoutCreate(&p->b, type, g.k, g.m, g.xRow));
    MELT_RETURN_IF_CUBLAS(
        cublasLtMatrixLayoutCreate(&p->d, type, g.n, g.m, g.yRow));
    const int32_t count = g.batches;
    const std::pair<cublasLtMatrixLayout_t, int64_t> strides[] = {
        {p->a, g.wBatch}, {p->b, g.xBatch}, {p->d, g.yBatch}};
    for (const auto &[layout, stride] : strides) {
      MELT_RETURN_IF_CUBLAS(cublasLtMatrixLayoutSetAttribute(
          layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
      MELT_RETURN_IF_CUBLAS(cublasLtMatrixLayoutSetAttribute(
          layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
          sizeof(stride)));
    }
    cublasLtMatmulPreference_t preference = nullptr;
    MELT_RETURN_IF_CUBLAS(cublasLtMatmulPreferenceCreate(&preference));
    size_t workspaceBytes = cublasWorkspaceBytes();
    cublasLtMatmulPreferenceSetAttribute(
        preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspaceBytes,
        sizeof(workspaceBytes));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle_, p->desc, p->a, p->b, p->d, p->d,
                                       preference, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(preference);
    if (status != CUBLAS_STATUS_SUCCESS || found == 0)
      return {"cuBLASLt has no algorithm for this batched GEMM (M " +
              std::to_string(g.m) + ", N " + std::to_string(g.n) + ", K " +
              std::to_string(g.k) + ", " + std::to_string(g.batches) +
              " batches): " + cublasLtGetStatusName(status)};
    p->algo = result.algo;
    it = batchedPlans_.emplace(key, std::move(p)).first;
  }
  return run(*it->second, w, x, y, nullptr, nullptr);
}

CudaStatus GemmRunner::fp8FromF32(const float *x, const float *up, int kIn,
                                  const __nv_fp8_e4m3 *w, const float *wScales,
                                  float *y, int m, int n, int k,
                                  bool &handled) {
  handled = m >= 1 && m <= std::min(smallMLimit_, kFp8SmallMFromF32Max) &&
            k > 0 && k % 128 == 0 && n >= 16 && n % 16 == 0 && kIn >= 4 &&
            kIn <= k && kIn % 4 == 0 &&
            reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
            reinterpret_cast<uintptr_t>(up) % 16 == 0;
  if (!handled)
    return CudaStatus::ok();
  return fromCuda(fp8SmallMFromF32(x, up, kIn, w, wScales, y, m, n, k,
                                   workspace_, workspaceBytes_, smCount_,
                                   stream_),
                  "fp8SmallMFromF32");
}

CudaStatus GemmRunner::fp8AfterNorm(const RowNormOperands &norm, int kIn,
                                    const __nv_fp8_e4m3 *w,
                                    const float *wScales, float *y, int n,
                                    int k, bool &handled) {
  // fp8SmallMFromF32's choice for one row (the few-tokens kernel where it
  // pays), on its weights-in-registers form.
  handled = quantizesF32Rows(1) && fp8FewTokensPay(1, n, k) &&
            fp8FewTokensTakeRegisters(1, n, k) &&
            fp8FewTokensAfterNormFit(n, kIn, k);
  if (!handled)
    return CudaStatus::ok();
  return fromCuda(
      fp8FewTokensAfterNorm(norm, kIn, w, wScales, y, n, k, smCount_, stream_),
      "fp8FewTokensAfterNorm");
}

CudaStatus GemmRunner::fp8BlockScaled(const __nv_fp8_e4m3 *x,
                                      const float *xScales,
                                      const __nv_fp8_e4m3 *w,
                                      const float *wScales, __nv_bfloat16 *y,
                                      int m, int n, int k) {
  if (m <= 0 || n <= 0 || k <= 0 || k % 128 != 0 || n % 16 != 0)
    return {"fp8 gemm: K must be a positive multiple of 128 and N of 16 "
            "(M " +
            std::to_string(m) + ", N " + std::to_string(n) + ", K " +
            std::to_string(k) + ")"};
  if (m <= smallMLimit_)
    return fromCuda(fp8SmallM(x, xScales, w, wScales, y, m, n, k, workspace_,
                              workspaceBytes_, smCount_, stream_),
                    "fp8SmallM");
  if (m <= splitKRows_ && fp8SplitKWgmmaTakes(x, w, y, m, n, k)) {
    const cudaError_t e =
        fp8SplitKWgmma(x, xScales, w, wScales, y, m, n, k, smCount_, stream_);
    if (e != cudaErrorNotSupported) // else cuBLASLt below
      return fromCuda(e, "fp8SplitKWgmma");
  }
  if ((k / 128) % 4 != 0)
    return {"fp8 gemm: cuBLASLt's 128x128 weight scales need K/128 to be a "
            "multiple of 4 (K " +
            std::to_string(k) + ")"};
  const int padded = (m + 15) / 16 * 16;
  if (padded != m) {
    // cuBLASLt wants M a multiple of 16: run on zero-padded copies.
    const int kBlocks = k / 128;
    size_t xBytes = size_t(padded) * k, sBytes = size_t(kBlocks) * padded * 4,
           yBytes = size_t(padded) * n * 2;
    size_t need = xBytes + sBytes + yBytes + 512;
    if (need > stagingBytes_) {
      if (staging_)
        cudaFree(staging_);
      staging_ = nullptr, stagingBytes_ = 0;
      if (CudaStatus s =
              fromCuda(cudaMalloc(&staging_, need), "cudaMalloc(gemm staging)"))
        return s;
      stagingBytes_ = need;
    }
    auto *base = static_cast<char *>(staging_);
    auto *xp = reinterpret_cast<__nv_fp8_e4m3 *>(base);
    auto *sp = reinterpret_cast<float *>(base + scratchPartBytes(xBytes));
    auto *yp = reinterpret_cast<__nv_bfloat16 *>(reinterpret_cast<char *>(sp) +
                                                 scratchPartBytes(sBytes));
    for (cudaError_t e :
         {cudaMemsetAsync(xp, 0, xBytes, stream_),
          cudaMemcpyAsync(xp, x, size_t(m) * k, cudaMemcpyDeviceToDevice,
                          stream_),
          cudaMemsetAsync(sp, 0, sBytes, stream_),
          cudaMemcpy2DAsync(sp, size_t(padded) * 4, xScales, size_t(m) * 4,
                            size_t(m) * 4, kBlocks, cudaMemcpyDeviceToDevice,
                            stream_)})
      if (CudaStatus s = fromCuda(e, "gemm staging copy"))
        return s;
    Plan *p = nullptr;
    if (CudaStatus s = plan(Kind::FP8Block, padded, n, k, p, wScales, sp))
      return s;
    if (CudaStatus s = run(*p, w, xp, yp, wScales, sp))
      return s;
    return fromCuda(cudaMemcpyAsync(y, yp, size_t(m) * n * 2,
                                    cudaMemcpyDeviceToDevice, stream_),
                    "gemm staging copy");
  }
  Plan *p = nullptr;
  if (CudaStatus s = plan(Kind::FP8Block, m, n, k, p, wScales, xScales))
    return s;
  return run(*p, w, x, y, wScales, xScales);
}
