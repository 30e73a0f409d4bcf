// Benchmark of the kernels a decode step of `mini` (../shared/bench/
// BASELINES.md) runs, at batch 1 to 64: each product of a few rows with a
// BF16 weight by melt's small-M kernel (SmallMGemm.h) beside cuBLASLt
// (the activations rounded to BF16, then GemmRunner::bf16, as the device
// ran them before), each with an FP8 weight from F32 x (Fp8SmallM.h: the
// runner's choice, the few-tokens kernel and its weights-in-registers
// form), the routed experts row by
// row (ModelKernels.h) and grouped by expert on the device (MoeByExpert.h),
// absorbed MLA split over the sequence (MlaSplit.h), a batch-1 step's
// fused MLA decode (MlaDecodeFused.h), the router's scores (its gate in
// F32 and in BF16, a decode step's rows to a prefill's) and choice, and
// the greedy argmax.
// Figures: microseconds and the bytes each must read (weights, cache rows)
// per second, beside the copy bandwidth measured in the same run. Weights
// are cycled through several copies, so that no call finds them in the
// 50 MB L2 left by the previous one (the fused MLA decode's also one copy
// read again: "hot"). One JSON line each.
//
//   melt-bench-decode-kernels [--bf16-products] [--iters N]
// --bf16-products: the products with BF16 weights alone (their kernels'
// switches compared quickly, e.g. MELT_CUDA_SMALLM_WIDE_K_SPLIT=0).
#include "cuda/Elementwise.h"
#include "cuda/Fp8SmallM.h"
#include "cuda/Gemm.h"
#include "cuda/MlaDecodeFused.h"
#include "cuda/MlaSplit.h"
#include "cuda/ModelKernels.h"
#include "cuda/MoeByExpert.h"
#include "cuda/MoeFp8Rows.h"
#include "cuda/SmallMGemm.h"

#include "BenchUtil.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

using namespace melt::rt::cuda;

static const char *benchName = "melt-bench-decode-kernels";

namespace {

__global__ void fillValues(uint16_t *bf16, float *f32, size_t n,
                           uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    float v = (int(melt::bench::hashIndex(i, seed) % 2001) - 1000) * 1e-4f;
    if (bf16)
      bf16[i] = uint16_t(__float_as_uint(v) >> 16);
    if (f32)
      f32[i] = v;
  }
}

template <typename T> T *deviceValues(size_t n, uint32_t seed) {
  T *p = nullptr;
  CHECK(cudaMalloc(&p, n * sizeof(T) + 16));
  if constexpr (sizeof(T) == 2)
    fillValues<<<1024, 256>>>(reinterpret_cast<uint16_t *>(p), nullptr, n,
                              seed);
  else
    fillValues<<<1024, 256>>>(nullptr, reinterpret_cast<float *>(p), n, seed);
  return p;
}

/// Random finite e4m3 codes (the low bit clear: never 0x7f / 0xff, NaN).
__global__ void fillFp8(uint8_t *codes, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    codes[i] = uint8_t(melt::bench::hashIndex(i, seed) & 0xfe);
}

uint8_t *deviceFp8(size_t n, uint32_t seed) {
  uint8_t *p = nullptr;
  CHECK(cudaMalloc(&p, n + 16));
  fillFp8<<<1024, 256>>>(p, n, seed);
  return p;
}

/// `values` on the device (a layout's table, a step's choices).
int32_t *deviceInts(const std::vector<int32_t> &values) {
  int32_t *p = nullptr;
  CHECK(cudaMalloc(&p, values.size() * 4));
  CHECK(
      cudaMemcpy(p, values.data(), values.size() * 4, cudaMemcpyHostToDevice));
  return p;
}

/// Copies of a weight of `bytes`, enough to leave L2 behind.
int copiesFor(size_t bytes) {
  return int(
      std::min<size_t>(16, std::max<size_t>(1, (size_t(256) << 20) / bytes)));
}

} // namespace

int main(int argc, char **argv) {
  // (--bf16-products taken out before the common options.)
  bool bf16ProductsAlone = false;
  std::vector<char *> args;
  for (int i = 0; i < argc; ++i) {
    if (i > 0 && !std::strcmp(argv[i], "--bf16-products"))
      bf16ProductsAlone = true;
    else
      args.push_back(argv[i]);
  }
  const int iters =
      melt::bench::itersFromArgs(benchName, int(args.size()), args.data(), 50,
                                 "[--bf16-products] [--iters N]");
  cudaDeviceProp prop = melt::bench::openDevice(benchName);
  melt::bench::printCopyBandwidth(benchName, prop, 20);
  std::unique_ptr<GemmRunner> gemm;
  if (CudaStatus s = GemmRunner::create(nullptr, gemm)) {
    std::fprintf(stderr, "%s: %s\n", benchName, s.error.c_str());
    return 1;
  }
  const int sms = prop.multiProcessorCount;

  // Products with BF16 weights (mini's projections).
  struct Shape {
    const char *name;
    int n, k;
  } shapes[] = {{"q_a+kv_a (fused down)", 2112, 2048},
                {"q_b", 3072, 1536},
                {"o_proj", 2048, 2048},
                {"shared expert gate/up", 1408, 2048},
                {"dense gate/up", 10944, 2048},
                {"dense down", 2048, 10944},
                {"logits", 129280, 2048}};
  for (const Shape &shape : shapes) {
    size_t weightBytes = size_t(shape.n) * shape.k * 2;
    int copies = copiesFor(weightBytes);
    std::vector<__nv_bfloat16 *> w(static_cast<size_t>(copies));
    for (int c = 0; c < copies; ++c)
      w[size_t(c)] = deviceValues<__nv_bfloat16>(size_t(shape.n) * shape.k,
                                                 uint32_t(c + 1));
    for (int m : {1, 2, 4, 8}) {
      float *x = deviceValues<float>(size_t(m) * shape.k, 99);
      __nv_bfloat16 *xRounded =
          deviceValues<__nv_bfloat16>(size_t(m) * shape.k, 99);
      float *y = deviceValues<float>(size_t(m) * shape.n, 3);
      float smallMs = melt::bench::timeMs(
          benchName,
          [&](int i) {
            CHECK(smallMGemm(x, w[size_t(i % copies)], true, m, shape.n,
                             shape.k, {y, false}, sms, nullptr));
          },
          iters);
      float cublasMs = melt::bench::timeMs(
          benchName,
          [&](int i) {
            CHECK(convert({x, false}, size_t(m) * shape.k, {xRounded, true},
                          nullptr));
            if (CudaStatus s = gemm->bf16(xRounded, w[size_t(i % copies)], y,
                                          true, m, shape.n, shape.k)) {
              std::fprintf(stderr, "%s: %s\n", benchName, s.error.c_str());
              std::exit(1);
            }
          },
          iters);
      std::printf("{\"what\": \"bf16_small_m\", \"shape\": \"%s\", \"m\": %d, "
                  "\"n\": %d, \"k\": %d, \"melt_us\": %.2f, "
                  "\"melt_weight_GBps\": %.1f, \"cublaslt_us\": %.2f, "
                  "\"cublaslt_weight_GBps\": %.1f}\n",
                  shape.name, m, shape.n, shape.k, smallMs * 1e3,
                  weightBytes / (smallMs * 1e-3) / 1e9, cublasMs * 1e3,
                  weightBytes / (cublasMs * 1e-3) / 1e9);
      std::fflush(stdout);
      CHECK(cudaFree(x));
      CHECK(cudaFree(xRounded));
      CHECK(cudaFree(y));
    }
    for (__nv_bfloat16 *p : w)
      CHECK(cudaFree(p));
  }
  if (bf16ProductsAlone)
    return 0;

  // The router's scores (its gate N x K, x F32 as the device holds it) at a
  // decode step's rows and a prefill's, the gate in F32 and in BF16 (the
  // compiler's choice for target cuda, as the router's precision computes
  // them): melt's small-M kernel where it fits, and cuBLASLt (F32, or x
  // rounded to BF16 then BF16), as CudaDevice::linear chooses between them.
  struct RouterShape {
    const char *name;
    int n, k;
  } routerGates[] = {{"mini router", 64, 2048}, {"V3 router", 256, 7168}};
  auto reportRouter = [&](const RouterShape &shape, int m, const char *gate,
                          const char *kernel, float ms) {
    std::printf("{\"what\": \"router\", \"shape\": \"%s\", \"gate\": "
                "\"%s\", \"kernel\": \"%s\", \"m\": %d, \"n\": %d, "
                "\"k\": %d, \"us\": %.2f}\n",
                shape.name, gate, kernel, m, shape.n, shape.k, ms * 1e3);
    std::fflush(stdout);
  };
  for (const RouterShape &shape : routerGates) {
    const size_t values = size_t(shape.n) * shape.k;
    const int copies = copiesFor(values * 4);
    std::vector<float *> wF32(static_cast<size_t>(copies));
    std::vector<__nv_bfloat16 *> wBf16(static_cast<size_t>(copies));
    for (int c = 0; c < copies; ++c) {
      wF32[size_t(c)] = deviceValues<float>(values, uint32_t(c + 1));
      wBf16[size_t(c)] = deviceValues<__nv_bfloat16>(values, uint32_t(c + 1));
    }
    for (int m : {1, 8, 16, 64, 128, 1024, 8192}) {
      float *x = deviceValues<float>(size_t(m) * shape.k, 99);
      __nv_bfloat16 *xRounded =
          deviceValues<__nv_bfloat16>(size_t(m) * shape.k, 99);
      float *y = deviceValues<float>(size_t(m) * shape.n, 3);
      auto checked = [&](CudaStatus s) {
        if (s) {
          std::fprintf(stderr, "%s: %s\n", benchName, s.error.c_str());
          std::exit(1);
        }
      };
      for (bool bf16 : {false, true}) {
        const char *gate = bf16 ? "bf16" : "f32";
        auto weight = [&](int i) -> const void * {
          return bf16 ? static_cast<const void *>(wBf16[size_t(i % copies)])
                      : static_cast<const void *>(wF32[size_t(i % copies)]);
        };
        if (smallMGemmFits(x, weight(0), bf16, m, shape.k))
          reportRouter(shape, m, gate, "small_m",
                       melt::bench::timeMs(
                           benchName,
                           [&](int i) {
                             CHECK(smallMGemm(x, weight(i), bf16, m, shape.n,
                                              shape.k, {y, false}, sms,
                                              nullptr));
                           },
                           iters));
        reportRouter(shape, m, gate, "cublaslt",
                     melt::bench::timeMs(
                         benchName,
                         [&](int i) {
                           if (!bf16) {
                             checked(gemm->f32(x, wF32[size_t(i % copies)], y,
                                               m, shape.n, shape.k));
                             return;
                           }
                           CHECK(convert({x, false}, size_t(m) * shape.k,
                                         {xRounded, true}, nullptr));
                           checked(gemm->bf16(xRounded,
                                              wBf16[size_t(i % copies)], y,
                                              true, m, shape.n, shape.k));
                         },
                         iters));
      }
      CHECK(cudaFree(x));
      CHECK(cudaFree(xRounded));
      CHECK(cudaFree(y));
    }
    for (float *p : wF32)
      CHECK(cudaFree(p));
    for (__nv_bfloat16 *p : wBf16)
      CHECK(cudaFree(p));
  }

  // Products with FP8 weights (128x128 scales) from F32 x, as a decode step
  // runs them (x quantized in the kernel): the runner's choice (the
  // few-tokens kernel where it pays, else the split-K one:
  // MELT_CUDA_FP8_FEW_TOKENS=0 shows the latter), the few-tokens products
  // (through the ring, with MELT_CUDA_FP8_FEW_TOKENS_REGISTERS=0) and the
  // few-tokens products with the weights in registers. K padded to 512 as
  // the runtime stores such weights.
  struct Fp8Shape {
    const char *name;
    int n, kIn, k;
  } fp8Shapes[] = {{"q_a+kv_a (fused down)", 2112, 2048, 2048},
                   {"q_b", 3072, 1536, 1536},
                   {"o_proj", 2048, 2048, 2048},
                   {"shared expert gate/up", 1408, 2048, 2048},
                   {"shared expert down", 2048, 1408, 1536},
                   {"dense gate/up", 10944, 2048, 2048},
                   {"dense down", 2048, 10944, 11264}};
  for (const Fp8Shape &shape : fp8Shapes) {
    const size_t weightBytes = size_t(shape.n) * shape.k;
    const int kBlocks = shape.k / 128, nBlocks = (shape.n + 127) / 128;
    const int copies = copiesFor(weightBytes);
    std::vector<uint8_t *> w(static_cast<size_t>(copies));
    for (int c = 0; c < copies; ++c)
      w[size_t(c)] = deviceFp8(weightBytes, uint32_t(c + 1));
    float *scales = deviceValues<float>(size_t(nBlocks) * kBlocks, 5);
    for (int m : {1, 2, 4, 8}) {
      float *x = deviceValues<float>(size_t(m) * shape.kIn, 99);
      float *y = deviceValues<float>(size_t(m) * shape.n, 3);
      auto weight = [&](int i) {
        return reinterpret_cast<const __nv_fp8_e4m3 *>(w[size_t(i % copies)]);
      };
      float runnerMs = melt::bench::timeMs(
          benchName,
          [&](int i) {
            bool handled = false;
            if (CudaStatus s =
                    gemm->fp8FromF32(x, nullptr, shape.kIn, weight(i), scales,
                                     y, m, shape.n, shape.k, handled);
                s || !handled) {
              std::fprintf(stderr, "%s: fp8 %s not taken %s\n", benchName,
                           shape.name, s.error.c_str());
              std::exit(1);
            }
          },
          iters);
      const bool fits = fp8FewTokensFit(m, shape.n, shape.k);
      float fewMs = fits ? melt::bench::timeMs(
                               benchName,
                               [&](int i) {
                                 CHECK(fp8FewTokensFromF32(
                                     x, nullptr, shape.kIn, weight(i), scales,
                                     y, m, shape.n, shape.k, sms, nullptr));
                               },
                               iters)
                         : 0.f;
      const bool registersFit = fp8FewTokensInRegistersFit(m, shape.n, shape.k);
      float registersMs =
          registersFit ? melt::bench::timeMs(
                             benchName,
                             [&](int i) {
                               CHECK(fp8FewTokensInRegistersFromF32(
                                   x, nullptr, shape.kIn, weight(i), scales, y,
                                   m, shape.n, shape.k, sms, nullptr));
                             },
                             iters)
                       : 0.f;
      auto rate = [&](float ms) {
        return ms > 0.f ? weightBytes / (ms * 1e-3) / 1e9 : 0.0;
      };
      std::printf("{\"what\": \"fp8_small_m\", \"shape\": \"%s\", \"m\": %d, "
                  "\"n\": %d, \"k\": %d, \"few_tokens_taken\": %s, "
                  "\"runner_us\": %.2f, \"runner_weight_GBps\": %.1f, "
                  "\"few_tokens_us\": %.2f, \"few_tokens_weight_GBps\": %.1f, "
                  "\"registers_us\": %.2f, \"registers_weight_GBps\": %.1f}\n",
                  shape.name, m, shape.n, shape.k,
                  fp8FewTokensPay(m, shape.n, shape.k) ? "true" : "false",
                  runnerMs * 1e3, rate(runnerMs), fewMs * 1e3, rate(fewMs),
                  registersMs * 1e3, rate(registersMs));
      std::fflush(stdout);
      CHECK(cudaFree(x));
      CHECK(cudaFree(y));
    }
    CHECK(cudaFree(scales));
    for (uint8_t *p : w)
      CHECK(cudaFree(p));
  }

  // Routed experts row by row: 64 experts of 2048 -> 1408 -> 2048, top 6;
  // grouped by expert with BF16 and with FP8 weights (128x128 scales), and
  // the FP8 stacks row by row.
  {
    const int experts = 64, inter = 1408, dim = 2048, choices = 6;
    size_t expertValues = size_t(experts) * inter * dim;
    int copies = copiesFor(3 * expertValues * 2);
    std::vector<__nv_bfloat16 *> gate(static_cast<size_t>(copies)),
        up(static_cast<size_t>(copies)), down(static_cast<size_t>(copies));
    for (int c = 0; c < copies; ++c) {
      gate[size_t(c)] = deviceValues<__nv_bfloat16>(expertValues, 10 + c);
      up[size_t(c)] = deviceValues<__nv_bfloat16>(expertValues, 30 + c);
      down[size_t(c)] = deviceValues<__nv_bfloat16>(expertValues, 50 + c);
    }
    int fp8Copies = copiesFor(3 * expertValues);
    size_t scaleCount =
        size_t(experts) * ((inter + 127) / 128) * ((dim + 127) / 128);
    std::vector<ExpertStacks> fp8Stacks(static_cast<size_t>(fp8Copies));
    for (int c = 0; c < fp8Copies; ++c) {
      ExpertStacks &f = fp8Stacks[size_t(c)];
      f.type = ExpertStacks::Type::Fp8Blocks;
      f.gate = deviceFp8(expertValues, 70 + c);
      f.up = deviceFp8(expertValues, 90 + c);
      f.down = deviceFp8(expertValues, 110 + c);
      f.gateScales = deviceValues<float>(scaleCount, 130 + c);
      f.upScales = deviceValues<float>(scaleCount, 150 + c);
      f.downScales = deviceValues<float>(scaleCount, 170 + c);
    }
    for (int tokens : {1, 4, 16, 64}) {
      std::vector<int32_t> chosen(static_cast<size_t>(tokens) * choices);
      for (size_t i = 0; i < chosen.size(); ++i)
        chosen[i] = int32_t((i * 37 + i / choices * 11) % experts);
      int32_t *indices = deviceInts(chosen), *bad = nullptr;
      CHECK(cudaMalloc(&bad, 4));
      CHECK(cudaMemset(bad, 0, 4));
      float *x = deviceValues<float>(size_t(tokens) * dim, 5);
      float *weights = deviceValues<float>(chosen.size(), 6);
      float *scratch = deviceValues<float>(chosen.size() * inter, 7);
      float *y = deviceValues<float>(size_t(tokens) * dim, 8);
      std::vector<int32_t> distinct(chosen);
      std::sort(distinct.begin(), distinct.end());
      size_t used = size_t(std::unique(distinct.begin(), distinct.end()) -
                           distinct.begin());
      float ms = melt::bench::timeMs(
          benchName,
          [&](int i) {
            size_t c = size_t(i % copies);
            CHECK(moeExpertsRowwise(
                x, indices, weights, gate[c], up[c], down[c], true, tokens,
                choices, experts, inter, dim, true, scratch, y, bad, nullptr));
          },
          iters);
      void *grouped = nullptr;
      CHECK(cudaMalloc(
          &grouped, moeByExpertScratchBytes(tokens, choices, experts, inter)));
      float byExpertMs = melt::bench::timeMs(
          benchName,
          [&](int i) {
            size_t c = size_t(i % copies);
            ExpertStacks stacks;
            stacks.type = ExpertStacks::Type::BF16;
            stacks.gate = gate[c];
            stacks.up = up[c];
            stacks.down = down[c];
            CHECK(moeExpertsByExpert(x, indices, weights, stacks, tokens,
                                     choices, experts, inter, dim, true,
                                     /*tensorCores=*/true, grouped, y, bad,
                                     nullptr));
          },
          iters);
      float fp8Ms = melt::bench::timeMs(
          benchName,
          [&](int i) {
            CHECK(moeExpertsByExpert(
                x, indices, weights, fp8Stacks[size_t(i % fp8Copies)], tokens,
                choices, experts, inter, dim, true, /*tensorCores=*/true,
                grouped, y, bad, nullptr));
          },
          iters);
      CHECK(cudaFree(grouped));
      float fp8RowsMs = melt::bench::timeMs(
          benchName,
          [&](int i) {
            CHECK(moeExpertsFp8Rowwise(x, indices, weights,
                                       fp8Stacks[size_t(i % fp8Copies)], tokens,
                                       choices, experts, inter, dim, true,
                                       false, scratch, y, bad, nullptr));
          },
          iters);
      // The bytes that must be read: each chosen expert once.
      double bytes = double(used) * 3 * inter * dim * 2;
      std::printf("{\"what\": \"moe\", \"tokens\": %d, "
                  "\"experts_read\": %zu, \"rowwise_us\": %.2f, "
                  "\"rowwise_weight_GBps\": %.1f, \"by_expert_us\": %.2f, "
                  "\"by_expert_weight_GBps\": %.1f, "
                  "\"by_expert_fp8_us\": %.2f, "
                  "\"by_expert_fp8_weight_GBps\": %.1f, "
                  "\"rowwise_fp8_us\": %.2f, "
                  "\"rowwise_fp8_weight_GBps\": %.1f}\n",
                  tokens, used, ms * 1e3, bytes / (ms * 1e-3) / 1e9,
                  byExpertMs * 1e3, bytes / (byExpertMs * 1e-3) / 1e9,
                  fp8Ms * 1e3, bytes / 2 / (fp8Ms * 1e-3) / 1e9,
                  fp8RowsMs * 1e3, bytes / 2 / (fp8RowsMs * 1e-3) / 1e9);
      std::fflush(stdout);
      for (void *p : {(void *)indices, (void *)bad, (void *)x, (void *)weights,
                      (void *)scratch, (void *)y})
        CHECK(cudaFree(p));
    }
    for (int c = 0; c < copies; ++c)
      for (void *p : {(void *)gate[size_t(c)], (void *)up[size_t(c)],
                      (void *)down[size_t(c)]})
        CHECK(cudaFree(p));
    for (const ExpertStacks &f : fp8Stacks)
      for (const void *p :
           {f.gate, f.up, f.down, (const void *)f.gateScales,
            (const void *)f.upScales, (const void *)f.downScales})
        CHECK(cudaFree(const_cast<void *>(p)));
  }

  // Absorbed MLA (mini: 16 heads; 128 as DeepSeek-V3), every sequence at
  // `context` positions, pages in order.
  for (int heads : {16, 128})
    for (int batch : {1, 16, 64})
      for (int context : {192, 4096}) {
        const int nope = 128, rope = 64, latent = 512, valueDim = 128;
        const int width = latent + rope;
        const int perSequence = (context + kPageRows - 1) / kPageRows;
        const int pages = batch * perSequence;
        std::vector<int32_t> table(static_cast<size_t>(pages)),
            positions(static_cast<size_t>(batch)),
            sequences(static_cast<size_t>(batch)),
            lengths(static_cast<size_t>(batch), context);
        std::iota(table.begin(), table.end(), 0);
        std::iota(sequences.begin(), sequences.end(), 0);
        std::fill(positions.begin(), positions.end(), context - 1);
        PagedLayout layout{deviceInts(positions), deviceInts(sequences),
                           deviceInts(table),     deviceInts(lengths),
                           perSequence,           batch,
                           pages * kPageRows};
        float *cache =
            deviceValues<float>(size_t(pages) * kPageRows * width, 1);
        float *qn = deviceValues<float>(size_t(batch) * heads * nope, 2);
        float *qr = deviceValues<float>(size_t(batch) * heads * rope, 3);
        float *wUk = deviceValues<float>(size_t(heads) * nope * latent, 4);
        float *wUv = deviceValues<float>(size_t(heads) * valueDim * latent, 5);
        float *out = deviceValues<float>(size_t(batch) * heads * valueDim, 6);
        int32_t *bad = nullptr;
        CHECK(cudaMalloc(&bad, 4));
        MlaSplitShape shape{batch,
                            heads,
                            nope,
                            rope,
                            latent,
                            valueDim,
                            perSequence * kPageRows};
        int chunks = mlaSplitChunks(shape, sms);
        float *scratch =
            deviceValues<float>(mlaSplitScratchFloats(shape, chunks), 7);
        float ms = melt::bench::timeMs(
            benchName,
            [&](int) {
              CHECK(mlaSplit(qn, qr, cache, layout, wUk, wUv, shape, chunks,
                             0.07f, scratch, out, bad, nullptr));
            },
            iters);
        double cacheBytes = double(batch) * context * width * 4;
        double weightBytes = double(heads) * (nope + valueDim) * latent * 4;
        std::printf("{\"what\": \"mla_split_f32\", \"heads\": %d, \"batch\": "
                    "%d, \"context\": %d, \"chunks\": %d, \"us\": %.2f, "
                    "\"cache_GBps\": %.1f, \"bytes_GBps\": %.1f, "
                    "\"tflops\": %.2f}\n",
                    heads, batch, context, chunks, ms * 1e3,
                    cacheBytes / (ms * 1e-3) / 1e9,
                    (cacheBytes + weightBytes) / (ms * 1e-3) / 1e9,
                    4.0 * batch * heads * context * width / (ms * 1e-3) / 1e12);
        std::fflush(stdout);
        for (void *p : {(void *)layout.positions, (void *)layout.sequences,
                        (void *)layout.pages, (void *)layout.lengths,
                        (void *)cache, (void *)qn, (void *)qr, (void *)wUk,
                        (void *)wUv, (void *)out, (void *)bad, (void *)scratch})
          CHECK(cudaFree(p));
      }

  // The fused MLA decode of a batch-1 step (MlaDecodeFused.h, mini's 16
  // heads, BF16 cache): its W_UK / W_UV (8 MB of F32) cycled through
  // copies past the L2 ("cold", as a step reads them) and one copy read
  // again ("hot", in L2 from the call before): what the weights' trip from
  // memory costs the kernel.
  for (int context : {128, 512})
    for (bool hot : {false, true}) {
      const int heads = 16, nope = 128, rope = 64, latent = 512;
      const int valueDim = 128, width = latent + rope;
      const int perSequence = (context + kPageRows - 1) / kPageRows;
      std::vector<int32_t> table(static_cast<size_t>(perSequence));
      std::iota(table.begin(), table.end(), 0);
      const std::vector<int32_t> positions = {context - 1}, sequences = {0},
                                 lengths = {context};
      PagedLayout layout{
          deviceInts(positions),  deviceInts(sequences), deviceInts(table),
          deviceInts(lengths),    perSequence,           1,
          perSequence * kPageRows};
      auto *cache = deviceValues<__nv_bfloat16>(
          size_t(perSequence) * kPageRows * width, 1);
      float *qn = deviceValues<float>(size_t(heads) * nope, 2);
      float *qr = deviceValues<float>(size_t(heads) * rope, 3);
      float *out = deviceValues<float>(size_t(heads) * valueDim, 6);
      const size_t ukValues = size_t(heads) * nope * latent;
      const size_t uvValues = size_t(heads) * valueDim * latent;
      const int copies = hot ? 1 : copiesFor((ukValues + uvValues) * 4);
      std::vector<float *> wUk(static_cast<size_t>(copies)),
          wUv(static_cast<size_t>(copies));
      for (int c = 0; c < copies; ++c) {
        wUk[size_t(c)] = deviceValues<float>(ukValues, uint32_t(40 + c));
        wUv[size_t(c)] = deviceValues<float>(uvValues, uint32_t(80 + c));
      }
      const MlaSplitShape shape{
          1, heads, nope, rope, latent, valueDim, perSequence * kPageRows};
      float ms = melt::bench::timeMs(
          benchName,
          [&](int i) {
            CHECK(mlaDecodeFused(qn, qr, cache, layout, wUk[size_t(i % copies)],
                                 wUv[size_t(i % copies)], shape, 0.07f, out,
                                 nullptr));
          },
          iters);
      const double weightBytes = double(ukValues + uvValues) * 4;
      std::printf("{\"what\": \"mla_fused\", \"heads\": %d, \"batch\": 1, "
                  "\"context\": %d, \"weights\": \"%s\", \"us\": %.2f, "
                  "\"weight_GBps\": %.1f}\n",
                  heads, context, hot ? "hot" : "cold", ms * 1e3,
                  weightBytes / (ms * 1e-3) / 1e9);
      std::fflush(stdout);
      for (int c = 0; c < copies; ++c) {
        CHECK(cudaFree(wUk[size_t(c)]));
        CHECK(cudaFree(wUv[size_t(c)]));
      }
      for (void *p : {(void *)layout.positions, (void *)layout.sequences,
                      (void *)layout.pages, (void *)layout.lengths,
                      (void *)cache, (void *)qn, (void *)qr, (void *)out})
        CHECK(cudaFree(p));
    }

  // The router's choice from its logits (mini: 64 experts, top 6; V3: 256,
  // top 8; sigmoid scores, bias, 8 groups keep 4), and the greedy argmax
  // over mini's 129280 logits a row (they were just written: from L2).
  struct Router {
    const char *name;
    int experts, topK;
  } routers[] = {{"mini", 64, 6}, {"v3", 256, 8}};
  for (const Router &r : routers)
    for (int tokens : {1, 16, 64}) {
      float *logits = deviceValues<float>(size_t(tokens) * r.experts, 11);
      float *bias = deviceValues<float>(size_t(r.experts), 12);
      float *weights = deviceValues<float>(size_t(tokens) * r.topK, 13);
      int32_t *indices = nullptr;
      CHECK(cudaMalloc(&indices, size_t(tokens) * r.topK * 4));
      const RouterConfig config{true, 2, r.topK, 8, 4, true, 2.5};
      float ms = melt::bench::timeMs(
          benchName,
          [&](int) {
            CHECK(routeExperts(logits, bias, tokens, r.experts, config, indices,
                               weights, nullptr));
          },
          iters);
      std::printf("{\"what\": \"route\", \"router\": \"%s\", \"tokens\": "
                  "%d, \"us\": %.2f}\n",
                  r.name, tokens, ms * 1e3);
      std::fflush(stdout);
      for (void *p :
           {(void *)logits, (void *)bias, (void *)weights, (void *)indices})
        CHECK(cudaFree(p));
    }
  for (int rows : {1, 16, 64}) {
    const int vocab = 129280;
    float *logits = deviceValues<float>(size_t(rows) * vocab, 14);
    int32_t *ids = nullptr, *scratch = nullptr;
    CHECK(cudaMalloc(&ids, size_t(rows) * 4));
    CHECK(cudaMalloc(&scratch, argmaxScratchWords(rows, vocab) * 4 + 4));
    float ms = melt::bench::timeMs(
        benchName,
        [&](int) {
          CHECK(argmaxRows(logits, rows, vocab, ids, scratch, nullptr));
        },
        iters);
    std::printf("{\"what\": \"argmax\", \"rows\": %d, \"vocab\": %d, "
                "\"us\": %.2f, \"GBps\": %.1f}\n",
                rows, vocab, ms * 1e3,
                double(rows) * vocab * 4 / (ms * 1e-3) / 1e9);
    std::fflush(stdout);
    for (void *p : {(void *)logits, (void *)ids, (void *)scratch})
      CHECK(cudaFree(p));
  }
  return 0;
}
