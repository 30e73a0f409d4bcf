// Benchmark of the row kernels a prefill of `mini` (../shared/bench/
// BASELINES.md) runs at 8192 rows (8 x 1024 tokens), as its CUDA device
// calls them. The RMSNorms (Elementwise.h): a layer's input norm after
// the residual add (F32, 2048 columns) quantizing its rows for its FP8
// products, the first layer's without the add, the query latent's (BF16
// from the down projection, 1536 columns) and the key-value latent's into
// F32 (512 columns, no products); each with its F32 rows left unwritten
// (the products read the codes) and written; the first of 1 to 2048 rows
// as well (a decode step's to a short prefill's). The SiLU-mul quantizes
// (Quantize.h) of the BF16 gate and up of the dense MLP (10944 columns,
// the down projection's K padded to 11264) and of a shared expert (1408).
// The routed experts' combine (ModelKernels.h: 6 BF16 rows a token and
// the shared expert's).
// Inputs are cycled through enough copies that none is in the 50 MB L2
// from the call before. Figures: microseconds and the bytes each must
// move (inputs read, sums, rows, codes and scales written) per second,
// beside the copy bandwidth of the same run. MELT_CUDA_NORM_BY_WARP=0 runs
// the block-a-row norms, MELT_CUDA_NORM_BY_WARP_ROWS=1 a warp a row for
// any rows. One JSON line each.
//
//   melt-bench-prefill-rows [--iters N]
#include "cuda/Elementwise.h"
#include "cuda/ModelKernels.h"
#include "cuda/Quantize.h"
#include "cuda/RowNorm.cuh"

#include "BenchUtil.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <vector>

using namespace melt::rt::cuda;

static const char *benchName = "melt-bench-prefill-rows";

namespace {

/// `copies` device buffers of n values each, filled with fillRandom.
template <typename T>
std::vector<void *> buffers(size_t n, int copies, uint32_t seed) {
  std::vector<void *> all;
  for (int c = 0; c < copies; ++c) {
    T *p = nullptr;
    CHECK(cudaMalloc(&p, n * sizeof(T)));
    if constexpr (sizeof(T) == 1)
      CHECK(cudaMemset(p, 0, n));
    else
      melt::bench::fillRandom<<<1024, 256>>>(p, n, seed + uint32_t(c));
    all.push_back(p);
  }
  CHECK(cudaDeviceSynchronize());
  return all;
}

struct Case {
  const char *name;
  int rows, cols;
  bool bf16Input, add, quantize;
};

} // namespace

int main(int argc, char **argv) {
  const int iters = melt::bench::itersFromArgs(benchName, argc, argv, 50);
  cudaDeviceProp prop = melt::bench::openDevice(benchName);
  melt::bench::printCopyBandwidth(benchName, prop, 20);
  const int rows = 8192;
  const Case cases[] = {
      {"layer input norm after the add", rows, 2048, false, true, true},
      {"first layer's input norm", rows, 2048, false, false, true},
      {"query latent norm", rows, 1536, true, false, true},
      {"key-value latent norm", rows, 512, true, false, false},
      // The same norm of fewer rows: a decode step's to a short prefill's.
      {"layer input norm after the add", 1, 2048, false, true, true},
      {"layer input norm after the add", 64, 2048, false, true, true},
      {"layer input norm after the add", 1024, 2048, false, true, true},
      {"layer input norm after the add", 2048, 2048, false, true, true}};
  for (const Case &c : cases) {
    const int rows = c.rows;
    const size_t n = size_t(rows) * c.cols;
    const size_t inBytes = n * (c.bf16Input ? 2 : 4);
    // Enough copies of the inputs that a call's are not in L2 (a few
    // rows' are, in a decode step too).
    const int copies = std::min(64, int((size_t(150) << 20) / inBytes) + 2);
    std::vector<void *> x = c.bf16Input ? buffers<__nv_bfloat16>(n, copies, 1)
                                        : buffers<float>(n, copies, 1);
    std::vector<void *> b =
        c.add ? buffers<float>(n, copies, 7) : std::vector<void *>{};
    std::vector<void *> sum =
        c.add ? buffers<float>(n, copies, 9) : std::vector<void *>{};
    std::vector<void *> gamma = buffers<float>(size_t(c.cols), 1, 3);
    std::vector<void *> y = buffers<float>(n, copies, 5);
    std::vector<void *> q = buffers<uint8_t>(n, copies, 11);
    std::vector<void *> scales =
        buffers<float>(size_t(c.cols / 128) * rows, copies, 13);
    // Whether these rows run a warp a row, as the library decides it.
    const Operand x0{x[0], c.bf16Input}, b0{c.add ? b[0] : nullptr, false};
    const Result sum0{c.add ? sum[0] : nullptr, false};
    const bool byWarp = c.add ? normRowsByWarp(rows, c.cols, x0, &b0, &sum0)
                              : normRowsByWarp(rows, c.cols, x0);
    for (bool rowsWritten : {false, true}) {
      if (!c.quantize && !rowsWritten)
        continue;
      auto call = [&](int i) {
        const int k = i % copies;
        const Operand xi{x[size_t(k)], c.bf16Input};
        const Operand g{gamma[0], false};
        cudaError_t status;
        if (!c.quantize) {
          status = rmsNorm(xi, g, 1e-6f, rows, c.cols,
                           Result{y[size_t(k)], false}, nullptr);
        } else {
          const Operand bi{c.add ? b[size_t(k)] : nullptr, false};
          status = rmsNormQuantizeRowsFp8(
              xi, c.add ? &bi : nullptr,
              Result{c.add ? sum[size_t(k)] : nullptr, false}, g, 1e-6f, rows,
              c.cols,
              rowsWritten ? static_cast<float *>(y[size_t(k)]) : nullptr,
              static_cast<__nv_fp8_e4m3 *>(q[size_t(k)]),
              static_cast<float *>(scales[size_t(k)]), nullptr);
        }
        CHECK(status);
      };
      const float ms = melt::bench::timeMs(benchName, call, iters);
      double bytes = double(inBytes) * (c.add ? 3 : 1); // x, b and the sum
      if (rowsWritten)
        bytes += double(n) * 4;
      if (c.quantize)
        bytes += double(n) + double(c.cols / 128) * rows * 4;
      std::printf("{\"what\": \"prefill_norm\", \"norm\": \"%s\", \"rows\": "
                  "%d, \"cols\": %d, \"rows_written\": %s, \"by_warp\": %s, "
                  "\"us\": %.2f, \"GBps\": %.1f}\n",
                  c.name, rows, c.cols, rowsWritten ? "true" : "false",
                  byWarp ? "true" : "false", ms * 1e3,
                  bytes / (ms * 1e-3) / 1e9);
    }
    for (auto *list : {&x, &b, &sum, &gamma, &y, &q, &scales})
      for (void *p : *list)
        CHECK(cudaFree(p));
  }
  struct Product {
    const char *name;
    int kIn, k;
  } products[] = {{"dense MLP's SiLU-mul quantize", 10944, 11264},
                  {"shared expert's SiLU-mul quantize", 1408, 1408}};
  for (const Product &p : products) {
    const size_t n = size_t(rows) * p.kIn;
    const int copies = int((size_t(150) << 20) / (2 * n * 2)) + 2;
    std::vector<void *> gate = buffers<__nv_bfloat16>(n, copies, 1),
                        up = buffers<__nv_bfloat16>(n, copies, 2),
                        q = buffers<uint8_t>(size_t(rows) * p.k, copies, 3),
                        scales =
                            buffers<float>(size_t(p.k / 128) * rows, copies, 4);
    auto call = [&](int i) {
      const size_t c = size_t(i % copies);
      CHECK(siluMulQuantizeRowsFp8Padded(
          static_cast<const __nv_bfloat16 *>(gate[c]),
          static_cast<const __nv_bfloat16 *>(up[c]), rows, p.kIn, p.k,
          static_cast<__nv_fp8_e4m3 *>(q[c]), static_cast<float *>(scales[c]),
          nullptr));
    };
    const float ms = melt::bench::timeMs(benchName, call, iters);
    const double bytes =
        double(n) * 4 + double(rows) * p.k + double(p.k / 128) * rows * 4;
    std::printf("{\"what\": \"prefill_quantize\", \"product\": \"%s\", "
                "\"rows\": %d, \"cols\": %d, \"us\": %.2f, \"GBps\": %.1f}\n",
                p.name, rows, p.kIn, ms * 1e3, bytes / (ms * 1e-3) / 1e9);
    for (auto *list : {&gate, &up, &q, &scales})
      for (void *b : *list)
        CHECK(cudaFree(b));
  }
  // The routed experts' combine (ModelKernels.h): each token's six BF16
  // rows of the down product weighted and summed, the shared expert's BF16
  // row added, into F32; the rows in expert order (a permutation of the
  // pairs, as grouped).
  {
    const int choices = 6, dim = 2048, pairs = rows * choices;
    const size_t n = size_t(pairs) * dim;
    const int copies = 2;
    std::vector<void *> expertRows = buffers<__nv_bfloat16>(n, copies, 21),
                        plus = buffers<__nv_bfloat16>(size_t(rows) * dim,
                                                      copies, 22),
                        y = buffers<float>(size_t(rows) * dim, copies, 23),
                        weights = buffers<float>(size_t(pairs), 1, 24);
    std::vector<int32_t> order(static_cast<size_t>(pairs));
    for (int p = 0; p < pairs; ++p) // pair p's row: by expert, as grouped
      order[size_t(p)] = int32_t((size_t(p) * 7919) % size_t(pairs));
    int32_t *rowOfPair = nullptr;
    CHECK(cudaMalloc(&rowOfPair, order.size() * sizeof(int32_t)));
    CHECK(cudaMemcpy(rowOfPair, order.data(), order.size() * sizeof(int32_t),
                     cudaMemcpyHostToDevice));
    auto call = [&](int i) {
      const size_t c = size_t(i % copies);
      CHECK(combineExpertRows({expertRows[c], true}, rowOfPair,
                              static_cast<const float *>(weights[0]), rows,
                              choices, dim, true, static_cast<float *>(y[c]),
                              nullptr, {plus[c], true}));
    };
    const float ms = melt::bench::timeMs(benchName, call, iters);
    const double bytes = double(n) * 2 + double(rows) * dim * (2 + 4);
    std::printf("{\"what\": \"prefill_combine\", \"tokens\": %d, "
                "\"choices\": %d, \"dim\": %d, \"us\": %.2f, \"GBps\": "
                "%.1f}\n",
                rows, choices, dim, ms * 1e3, bytes / (ms * 1e-3) / 1e9);
    for (auto *list : {&expertRows, &plus, &y, &weights})
      for (void *b : *list)
        CHECK(cudaFree(b));
    CHECK(cudaFree(rowOfPair));
  }
  return 0;
}
