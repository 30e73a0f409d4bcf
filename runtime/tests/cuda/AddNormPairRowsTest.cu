// An add+norm whose addend is a MoE layer's experts output not yet combined
// (Elementwise.h's PairRowsSum): addRmsNorm and rmsNormQuantizeRowsFp8
// reading the pairs' rows must give what the combine kernel
// (finishPairOutput) and then the same add+norm give, bit for bit: the
// residual sum, the normalized rows (F32, BF16, FP8 codes and scales) and
// the combined output itself. Pairs whose expert is out of range, a shared
// expert's rows or none, 6 and 8 choices, mini's and V3's hidden sizes.
// Rows that go a warp a row are refused with nothing launched. Skips
// without a device.
#include "cuda/Elementwise.h"
#include "cuda/ModelKernels.h"

#include "CudaTestUtil.h"

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

struct PairCase {
  int tokens, choices, experts, dim;
  bool shared;
};

/// The case's operands on the device: each token's pairs' rows (then a
/// shared row each), choices with some out of range, the residual, gamma.
struct PairOperands {
  float *pairRows = nullptr, *x = nullptr, *gamma = nullptr;
  int32_t *indices = nullptr;
  PairOperands(const PairCase &c, std::mt19937 &rng) {
    std::normal_distribution<float> normal(0.f, 1.f);
    const size_t rows = size_t(c.tokens) * (c.choices + 1);
    std::vector<float> pairs(rows * c.dim), residual(size_t(c.tokens) * c.dim),
        g(size_t(c.dim));
    for (float &v : pairs)
      v = normal(rng);
    for (float &v : residual)
      v = 4.f * normal(rng);
    for (float &v : g)
      v = 1.f + 0.1f * normal(rng);
    std::vector<int32_t> chosen(size_t(c.tokens) * c.choices);
    for (size_t i = 0; i < chosen.size(); ++i)
      chosen[i] = i % 5 == 3 ? -1 : i % 7 == 4 ? c.experts : int32_t(i % 11);
    pairRows = toDevice(pairs);
    x = toDevice(residual);
    gamma = toDevice(g);
    indices = toDevice(chosen);
  }
  ~PairOperands() {
    cudaFree(pairRows), cudaFree(x), cudaFree(gamma), cudaFree(indices);
  }
  const float *sharedRows(const PairCase &c) const {
    return c.shared ? pairRows + size_t(c.tokens) * c.choices * c.dim : nullptr;
  }
};

/// What an add+norm wrote, back on the host.
struct NormOutputs {
  std::vector<float> sum, y, combined, scales;
  std::vector<uint16_t> yBf16;
  std::vector<uint8_t> codes;
};

template <typename T> std::vector<uint8_t> bytesOf(const std::vector<T> &v) {
  std::vector<uint8_t> bytes(v.size() * sizeof(T));
  std::memcpy(bytes.data(), v.data(), bytes.size());
  return bytes;
}

/// The add+norm of x and the case's combined experts output: `fused` reads
/// the pairs' rows itself, else the combine kernel runs first. `quantize`:
/// rmsNormQuantizeRowsFp8 (codes, scales, F32 and BF16 rows), else
/// addRmsNorm (F32 and BF16 rows).
NormOutputs addNorm(const PairCase &c, const PairOperands &in, bool fused,
                    bool quantize) {
  const size_t n = size_t(c.tokens) * c.dim;
  float *combined = deviceArray<float>(n), *sum = deviceArray<float>(n),
        *y = deviceArray<float>(n);
  auto *yBf16 = deviceArray<__nv_bfloat16>(n);
  auto *codes = deviceArray<__nv_fp8_e4m3>(n);
  float *scales = deviceArray<float>(n / 128);
  const PairRowsSum pairs{in.pairRows, in.indices,       c.choices, c.experts,
                          c.dim,       in.sharedRows(c), combined};
  if (!fused)
    EXPECT_EQ(finishPairOutput(combined, in.pairRows, in.indices, c.tokens,
                               c.choices, c.experts, c.dim, nullptr,
                               in.sharedRows(c)),
              cudaSuccess);
  const Operand b{combined, false};
  if (quantize)
    EXPECT_EQ(rmsNormQuantizeRowsFp8({in.x, false}, &b, {sum, false},
                                     {in.gamma, false}, 1e-6f, c.tokens, c.dim,
                                     y, codes, scales, nullptr, yBf16,
                                     fused ? &pairs : nullptr),
              cudaSuccess);
  else
    EXPECT_EQ(addRmsNorm({in.x, false}, b, {in.gamma, false}, 1e-6f, c.tokens,
                         c.dim, {sum, false}, {y, false}, nullptr, yBf16,
                         fused ? &pairs : nullptr),
              cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  NormOutputs out;
  out.sum = toHost(sum, n);
  out.y = toHost(y, n);
  out.combined = toHost(combined, n);
  std::vector<__nv_bfloat16> rounded = toHost(yBf16, n);
  out.yBf16.resize(n);
  std::memcpy(out.yBf16.data(), rounded.data(), n * 2);
  if (quantize) {
    out.codes = bytesOf(toHost(codes, n));
    out.scales = toHost(scales, n / 128);
  }
  for (void *p : {(void *)combined, (void *)sum, (void *)y, (void *)yBf16,
                  (void *)codes, (void *)scales})
    cudaFree(p);
  return out;
}

TEST(CudaAddNormPairRows, IsTheCombineThenTheAddNorm) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(11);
  const PairCase cases[] = {{1, 6, 64, 2048, true},
                            {1, 8, 256, 7168, true},
                            {3, 6, 64, 2048, false},
                            {5, 8, 256, 2048, true}};
  for (const PairCase &c : cases)
    for (bool quantize : {false, true}) {
      SCOPED_TRACE(testing::Message()
                   << c.tokens << " tokens, " << c.choices << " choices, dim "
                   << c.dim << (c.shared ? ", shared" : "")
                   << (quantize ? ", quantized" : ""));
      const PairOperands in(c, rng);
      const NormOutputs apart = addNorm(c, in, false, quantize);
      const NormOutputs fused = addNorm(c, in, true, quantize);
      EXPECT_EQ(differingBits(fused.combined, apart.combined), 0);
      EXPECT_EQ(differingBits(fused.sum, apart.sum), 0);
      EXPECT_EQ(differingBits(fused.y, apart.y), 0);
      EXPECT_EQ(fused.yBf16, apart.yBf16);
      EXPECT_EQ(fused.codes, apart.codes);
      EXPECT_EQ(differingBits(fused.scales, apart.scales), 0);
    }
}

TEST(CudaAddNormPairRows, RowsAWarpARowAreRefused) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  const int rows = 64, dim = 2048;
  ASSERT_FALSE(addNormTakesPairRows(rows, dim, {nullptr, false}));
  std::mt19937 rng(3);
  const PairOperands in({rows, 6, 64, dim, true}, rng);
  float *out = deviceArray<float>(size_t(rows) * dim);
  const PairRowsSum pairs{in.pairRows, in.indices, 6, 64, dim, nullptr, out};
  EXPECT_EQ(addRmsNorm({in.x, false}, {out, false}, {in.gamma, false}, 1e-6f,
                       rows, dim, {out, false}, {out, false}, nullptr, nullptr,
                       &pairs),
            cudaErrorNotSupported);
  // Choices past what the kernel holds, or rows of another width.
  PairRowsSum wide = pairs;
  wide.choices = kPairRowsSumMaxChoices + 1;
  EXPECT_FALSE(pairRowsSumTakes(wide, dim));
  EXPECT_FALSE(pairRowsSumTakes(pairs, dim + 128));
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  cudaFree(out);
}

} // namespace
