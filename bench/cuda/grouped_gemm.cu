// Benchmark of the grouped expert products (GroupedGemm.h) at the experts'
// shapes of `mini` (64 experts, hidden 2048, intermediate 1408, top-6) and
// DeepSeek-V3 (256, 7168, 2048, top-8) for a prefill of 8192 tokens, the
// choices spread over the experts by a hash: the gate/up pair (one launch
// writing SiLU(gate) * up) and the down product, with BF16 and with FP8
// weights (widened to BF16 in the kernel; the pair also on FP8 tensor
// cores, GroupedGemmFp8.h, by default and with GroupedFp8Options' other
// ways for comparison; the down product's F32 and BF16 rows, BF16 rows 16
// and 4 bytes a lane). Beside each, cuBLASLt on the same rows as one
// dense matrix (one expert's weights): BF16, and FP8 with block scales
// (the rate a single large product reaches, the ceiling the grouping is
// measured against). TFLOP/s count the rows the choices fill, not the
// padding. One JSON line each, after the copy bandwidth.
//
//   melt-bench-grouped-gemm [--iters N]
#include "cuda/ExpertGrouping.h"
#include "cuda/Gemm.h"
#include "cuda/GroupedGemm.h"
#include "cuda/GroupedGemmFp8.h"
#include "cuda/Quantize.h"

#include "BenchUtil.h"

#include <cuda_fp8.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

using namespace melt::rt::cuda;

static const char *benchName = "melt-bench-grouped-gemm";
#define CHECK_STATUS(call)                                                     \
  do {                                                                         \
    CudaStatus s = (call);                                                     \
    if (s) {                                                                   \
      std::fprintf(stderr, "%s: %s\n", benchName, s.error.c_str());            \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

namespace {

/// Bytes whose BF16 pairs or e4m3 codes stay finite and small (mask).
__global__ void fillBytes(uint8_t *data, size_t n, uint32_t seed,
                          uint8_t mask) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    data[i] = uint8_t(melt::bench::hashIndex(i, seed)) & mask;
}

__global__ void fillFloats(float *data, size_t n, float value) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    data[i] = value * (1 + (i % 7) * 0.01f);
}

template <typename T>
T *deviceBytes(size_t bytes, uint32_t seed, uint8_t mask) {
  void *p = nullptr;
  CHECK(cudaMalloc(&p, bytes));
  fillBytes<<<1024, 256>>>(static_cast<uint8_t *>(p), bytes, seed, mask);
  return static_cast<T *>(p);
}

float *deviceScales(size_t count) {
  float *p = nullptr;
  CHECK(cudaMalloc(&p, count * sizeof(float)));
  fillFloats<<<64, 256>>>(p, count, 1e-3f);
  return p;
}

struct Model {
  const char *name;
  int experts, hidden, inter, topK;
};

void runModel(const Model &model, int tokens, int iters, GemmRunner &gemm) {
  const int E = model.experts, D = model.hidden, I = model.inter;
  const int pairs = tokens * model.topK;
  // The step's choices, hashed over the experts, grouped on the device.
  std::vector<int32_t> chosen(static_cast<size_t>(pairs));
  for (int p = 0; p < pairs; ++p) { // a multiplicative hash of the pair
    uint32_t h = uint32_t(p) * 2654435761u;
    h ^= h >> 15;
    chosen[size_t(p)] = int32_t(h * 0x5bd1e995u >> 7) % E;
  }
  const int capacity = expertGroupingCapacity(pairs, E);
  int32_t *deviceChosen, *starts, *rowOfPair, *tokenOfRow, *bad;
  CHECK(cudaMalloc(&deviceChosen, pairs * 4));
  CHECK(cudaMemcpy(deviceChosen, chosen.data(), pairs * 4,
                   cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&starts, (E + 1) * 4));
  CHECK(cudaMalloc(&rowOfPair, pairs * 4));
  CHECK(cudaMalloc(&tokenOfRow, size_t(capacity) * 4));
  CHECK(cudaMalloc(&bad, 4));
  ExpertGroupingArgs grouping;
  grouping.chosen = deviceChosen;
  grouping.tokens = tokens, grouping.topK = model.topK, grouping.experts = E;
  grouping.capacity = capacity;
  grouping.starts = starts, grouping.rowOfPair = rowOfPair;
  grouping.tokenOfRow = tokenOfRow, grouping.bad = bad;
  CHECK(groupExperts(grouping, nullptr));
  std::vector<int32_t> hostStarts(size_t(E) + 1);
  CHECK(cudaMemcpy(hostStarts.data(), starts, (E + 1) * 4,
                   cudaMemcpyDeviceToHost));
  const int paddedRows = hostStarts.back();

  auto *x = deviceBytes<__nv_bfloat16>(size_t(capacity) * D * 2, 1, 0x3f);
  auto *act = deviceBytes<__nv_bfloat16>(size_t(capacity) * I * 2, 2, 0x3f);
  float *out = nullptr;
  CHECK(cudaMalloc(&out, size_t(capacity) * D * 4));
  __nv_bfloat16 *outBf16 = nullptr; // the down product's BF16 rows
  CHECK(cudaMalloc(&outBf16, size_t(capacity) * D * 2));
  const size_t upValues = size_t(E) * I * D;
  for (bool fp8 : {false, true}) {
    const size_t element = fp8 ? 1 : 2;
    const uint8_t mask = fp8 ? 0x77 : 0x3f;
    auto *gate = deviceBytes<uint8_t>(upValues * element, 3, mask);
    auto *up = deviceBytes<uint8_t>(upValues * element, 4, mask);
    auto *down = deviceBytes<uint8_t>(upValues * element, 5, mask);
    float *gateScales = nullptr, *upScales = nullptr, *downScales = nullptr;
    if (fp8) {
      gateScales = deviceScales(size_t(E) * (I / 128) * ((D + 127) / 128));
      upScales = deviceScales(size_t(E) * (I / 128) * ((D + 127) / 128));
      downScales = deviceScales(size_t(E) * (D / 128) * ((I + 127) / 128));
    }
    GroupedGemmArgs pair;
    pair.x = x, pair.w = gate, pair.w2 = up, pair.y = act;
    pair.wScales = gateScales, pair.w2Scales = upScales;
    pair.starts = starts, pair.groups = E, pair.capacity = capacity;
    pair.n = I, pair.k = D;
    GroupedGemmArgs downArgs;
    downArgs.x = act, downArgs.w = down, downArgs.yF32 = out;
    downArgs.wScales = downScales;
    downArgs.starts = starts, downArgs.groups = E;
    downArgs.capacity = capacity, downArgs.n = D, downArgs.k = I;
    // BF16 rows (the model's, where the combine reads BF16), and BF16 rows
    // 4 bytes a lane as the fragments hold them (GroupedGemmArgs::
    // wideStores) beside the default 16.
    GroupedGemmArgs downBf16 = downArgs, downBf16Narrow, pairNarrow = pair;
    downBf16.yF32 = nullptr, downBf16.y = outBf16;
    downBf16Narrow = downBf16;
    downBf16Narrow.wideStores = pairNarrow.wideStores = false;
    // FP8 stacks: the pair on FP8 tensor cores too (x as e4m3 codes).
    auto *xCodes = deviceBytes<uint8_t>(size_t(capacity) * D, 9, 0x77);
    float *xScales = deviceScales(size_t(D / 128) * capacity);
    GroupedFp8PairArgs fp8Pair;
    fp8Pair.x = xCodes, fp8Pair.xScales = xScales;
    fp8Pair.gate = gate, fp8Pair.up = up;
    fp8Pair.gateScales = gateScales, fp8Pair.upScales = upScales;
    fp8Pair.y = act, fp8Pair.starts = starts, fp8Pair.groups = E;
    fp8Pair.capacity = capacity, fp8Pair.n = I, fp8Pair.k = D;
    // The pair writing FP8 codes and scales, and the down product of them.
    auto *actCodes = deviceBytes<uint8_t>(size_t(capacity) * I, 10, 0x77);
    float *actScales = deviceScales(size_t(I / 128) * capacity);
    GroupedFp8PairArgs fp8PairFp8Out = fp8Pair;
    fp8PairFp8Out.y = nullptr;
    fp8PairFp8Out.yCodes = actCodes, fp8PairFp8Out.yScales = actScales;
    GroupedFp8Args fp8Down;
    fp8Down.x = actCodes, fp8Down.xScales = actScales;
    fp8Down.w = down, fp8Down.wScales = downScales, fp8Down.yF32 = out;
    fp8Down.starts = starts, fp8Down.groups = E, fp8Down.capacity = capacity;
    fp8Down.n = D, fp8Down.k = I;
    GroupedFp8Args fp8DownBf16 = fp8Down;
    fp8DownBf16.yF32 = nullptr, fp8DownBf16.y = outBf16;
    enum class Kernel {
      Bf16,
      Fp8Pair,
      Fp8PairFp8Out,
      Fp8Single,
      Fp8SingleBf16
    };
    // GroupedFp8Options' ways beside the default.
    GroupedFp8Options persistent, narrow, narrowStores, persistentNarrowStores;
    persistent.persistent = persistentNarrowStores.persistent = true;
    narrow.wideColumns = false;
    narrowStores.wideStores = persistentNarrowStores.wideStores = false;
    struct Product {
      const char *what;
      const GroupedGemmArgs &args;
      int products;
      Kernel kernel;
      GroupedFp8Options options = {};
    } products[] = {
        {"gate/up pair", pair, 2, Kernel::Bf16},
        {"gate/up pair, 4-byte stores", pairNarrow, 2, Kernel::Bf16},
        {"gate/up pair, fp8 tensor cores", pair, 2, Kernel::Fp8Pair},
        {"gate/up pair, fp8 tensor cores, 4-byte stores", pair, 2,
         Kernel::Fp8Pair, narrowStores},
        {"gate/up pair, fp8 tensor cores, persistent", pair, 2, Kernel::Fp8Pair,
         persistent},
        {"gate/up pair, fp8 tensor cores, fp8 out", pair, 2,
         Kernel::Fp8PairFp8Out},
        {"gate/up pair, fp8 tensor cores, fp8 out, persistent", pair, 2,
         Kernel::Fp8PairFp8Out, persistent},
        {"down", downArgs, 1, Kernel::Bf16},
        {"down, bf16 rows", downBf16, 1, Kernel::Bf16},
        {"down, bf16 rows, 4-byte stores", downBf16Narrow, 1, Kernel::Bf16},
        {"down, fp8 tensor cores", downArgs, 1, Kernel::Fp8Single},
        {"down, fp8 tensor cores, persistent", downArgs, 1, Kernel::Fp8Single,
         persistent},
        {"down, fp8 tensor cores, persistent, bf16 rows", downArgs, 1,
         Kernel::Fp8SingleBf16, persistent},
        {"down, fp8 tensor cores, persistent, bf16 rows, 4-byte stores",
         downArgs, 1, Kernel::Fp8SingleBf16, persistentNarrowStores},
        {"down, fp8 tensor cores, 128 columns", downArgs, 1, Kernel::Fp8Single,
         narrow}};
    for (const Product &p : products) {
      if (p.kernel != Kernel::Bf16 && !fp8)
        continue;
      fp8Pair.options = fp8PairFp8Out.options = fp8Down.options =
          fp8DownBf16.options = p.options;
      const float ms = melt::bench::timeMs(
          benchName,
          [&](int) {
            switch (p.kernel) {
            case Kernel::Bf16:
              CHECK(groupedGemmBf16(p.args, nullptr));
              break;
            case Kernel::Fp8Pair:
              CHECK(groupedGemmFp8Pair(fp8Pair, nullptr));
              break;
            case Kernel::Fp8PairFp8Out:
              CHECK(groupedGemmFp8Pair(fp8PairFp8Out, nullptr));
              break;
            case Kernel::Fp8Single:
              CHECK(groupedGemmFp8(fp8Down, nullptr));
              break;
            case Kernel::Fp8SingleBf16:
              CHECK(groupedGemmFp8(fp8DownBf16, nullptr));
              break;
            }
          },
          iters);
      // cuBLASLt on the same rows as one matrix, one expert's weights.
      const int n = p.args.n, k = p.args.k;
      auto *wDense = deviceBytes<__nv_bfloat16>(size_t(n) * k * 2, 6, 0x3f);
      auto *xDense = deviceBytes<__nv_bfloat16>(size_t(pairs) * k * 2, 7, 0x3f);
      __nv_bfloat16 *yDense = nullptr;
      CHECK(cudaMalloc(&yDense, size_t(pairs) * n * 2));
      const float denseMs = melt::bench::timeMs(
          benchName,
          [&](int) {
            for (int i = 0; i < p.products; ++i)
              CHECK_STATUS(
                  gemm.bf16(xDense, wDense, yDense, false, pairs, n, k));
          },
          iters);
      float denseFp8Ms = 0;
      if (fp8 && k % 512 == 0) { // cuBLASLt's block-scaled shapes
        auto *w8 = deviceBytes<__nv_fp8_e4m3>(size_t(n) * k, 8, 0x77);
        float *wScales = deviceScales(size_t((n + 127) / 128) * (k / 128));
        __nv_fp8_e4m3 *xq = nullptr;
        float *xScales = nullptr;
        CHECK(cudaMalloc(&xq, size_t(pairs) * k));
        CHECK(cudaMalloc(&xScales, size_t(pairs) * (k / 128) * 4));
        CHECK(quantizeRowsFp8(xDense, pairs, k, xq, xScales, nullptr));
        denseFp8Ms = melt::bench::timeMs(
            benchName,
            [&](int) {
              for (int i = 0; i < p.products; ++i)
                CHECK_STATUS(gemm.fp8BlockScaled(xq, xScales, w8, wScales,
                                                 yDense, pairs, n, k));
            },
            iters);
        CHECK(cudaFree(w8));
        CHECK(cudaFree(wScales));
        CHECK(cudaFree(xq));
        CHECK(cudaFree(xScales));
      }
      CHECK(cudaFree(wDense));
      CHECK(cudaFree(xDense));
      CHECK(cudaFree(yDense));
      const double flops = 2.0 * p.products * pairs * double(n) * k;
      std::printf(
          "{\"what\": \"grouped_gemm_melt\", \"model\": \"%s\", "
          "\"product\": \"%s\", \"weights\": \"%s\", \"tokens\": %d, "
          "\"rows\": %d, \"padded_rows\": %d, \"n\": %d, \"k\": %d, "
          "\"us\": %.1f, \"tflops\": %.1f, \"cublaslt_bf16_dense_us\": %.1f, "
          "\"cublaslt_bf16_dense_tflops\": %.1f, "
          "\"cublaslt_fp8_dense_tflops\": %.1f}\n",
          model.name, p.what, fp8 ? "fp8" : "bf16", tokens, pairs, paddedRows,
          n, k, ms * 1e3, flops / (ms * 1e-3) / 1e12, denseMs * 1e3,
          flops / (denseMs * 1e-3) / 1e12,
          denseFp8Ms > 0 ? flops / (denseFp8Ms * 1e-3) / 1e12 : 0.0);
      std::fflush(stdout);
    }
    CHECK(cudaFree(xCodes));
    CHECK(cudaFree(xScales));
    CHECK(cudaFree(actCodes));
    CHECK(cudaFree(actScales));
    CHECK(cudaFree(gate));
    CHECK(cudaFree(up));
    CHECK(cudaFree(down));
    CHECK(cudaFree(gateScales));
    CHECK(cudaFree(upScales));
    CHECK(cudaFree(downScales));
  }
  CHECK(cudaFree(x));
  CHECK(cudaFree(act));
  CHECK(cudaFree(out));
  CHECK(cudaFree(outBf16));
  CHECK(cudaFree(deviceChosen));
  CHECK(cudaFree(starts));
  CHECK(cudaFree(rowOfPair));
  CHECK(cudaFree(tokenOfRow));
  CHECK(cudaFree(bad));
}

} // namespace

int main(int argc, char **argv) {
  const int iters = melt::bench::itersFromArgs(benchName, argc, argv, 10);
  cudaDeviceProp prop = melt::bench::openDevice(benchName);
  melt::bench::printCopyBandwidth(benchName, prop, iters);
  std::unique_ptr<GemmRunner> gemm;
  CHECK_STATUS(GemmRunner::create(nullptr, gemm));
  const Model models[] = {{"mini", 64, 2048, 1408, 6},
                          {"deepseek-v3", 256, 7168, 2048, 8}};
  for (const Model &model : models)
    runModel(model, 8192, iters, *gemm);
  return 0;
}
