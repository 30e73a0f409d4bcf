// The experts' combine (combineExpertRows, ModelKernels.h): each token's
// chosen rows weighted and summed, then a shared expert's BF16 or F32 row
// added.
// The kernel of aligned rows (four values a thread) and the scalar one (the
// same call on rows one element off the 16-byte grid) sum in the same order, so
// they agree bit for bit; both against a double reference. Rows missing (-1: an
// expert outside the stack), BF16 and F32 rows, rows rounded to BF16 first, 6
// and 8 choices, V3's hidden size. A norm whose residual add makes the
// combine itself (CombinedRows, Elementwise.h) gives the bits of the combine
// then the norm: the sums, the normalized rows, their BF16 rows and their
// FP8 codes and scales. Skips without a device.
#include "cuda/Elementwise.h"
#include "cuda/ModelKernels.h"

#include "CudaTestUtil.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

struct CombineCase {
  int tokens, choices, dim;
  bool bf16Rows, combineBf16, withPlus;
  bool plusF32 = false; // the added row in F32 (else BF16)
};

/// Each (token, choice) pair's expert row: the pairs' rows shuffled, every
/// seventh pair's expert outside the stack (-1).
std::vector<int32_t> shuffledRowOfPair(int pairs, std::mt19937 &rng) {
  std::vector<int32_t> rowOfPair(static_cast<size_t>(pairs));
  for (int p = 0; p < pairs; ++p)
    rowOfPair[size_t(p)] = p;
  std::shuffle(rowOfPair.begin(), rowOfPair.end(), rng);
  for (int p = 0; p < pairs; p += 7)
    rowOfPair[size_t(p)] = -1;
  return rowOfPair;
}

/// combineExpertRows on the device, its rows `offset` elements past an
/// aligned start (offset 1: the scalar kernel).
std::vector<float> combineOnDevice(const CombineCase &c,
                                   const std::vector<float> &rows,
                                   const std::vector<int32_t> &rowOfPair,
                                   const std::vector<float> &weights,
                                   const std::vector<float> &plus, int offset) {
  const size_t n = rows.size();
  void *expertOut = nullptr;
  if (c.bf16Rows) {
    std::vector<__nv_bfloat16> held(n + size_t(offset));
    for (size_t i = 0; i < n; ++i)
      held[i + size_t(offset)] = __float2bfloat16(rows[i]);
    expertOut = toDevice(held);
  } else {
    std::vector<float> held(n + size_t(offset));
    std::copy(rows.begin(), rows.end(), held.begin() + offset);
    expertOut = toDevice(held);
  }
  const void *first = static_cast<const char *>(expertOut) +
                      size_t(offset) * (c.bf16Rows ? 2 : 4);
  int32_t *dRows = toDevice(rowOfPair);
  float *dWeights = toDevice(weights);
  void *dPlus = nullptr;
  if (c.withPlus && c.plusF32) {
    dPlus = toDevice(plus);
  } else if (c.withPlus) {
    std::vector<__nv_bfloat16> held(plus.size());
    for (size_t i = 0; i < plus.size(); ++i)
      held[i] = __float2bfloat16(plus[i]);
    dPlus = toDevice(held);
  }
  float *y = deviceArray<float>(size_t(c.tokens) * c.dim);
  EXPECT_EQ(combineExpertRows({first, c.bf16Rows}, dRows, dWeights, c.tokens,
                              c.choices, c.dim, c.combineBf16, y, nullptr,
                              {dPlus, !c.plusF32}),
            cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> out = toHost(y, size_t(c.tokens) * c.dim);
  cudaFree(expertOut), cudaFree(dRows), cudaFree(dWeights), cudaFree(y);
  if (dPlus)
    cudaFree(dPlus);
  return out;
}

TEST(CudaExpertCombine, AlignedAndScalarKernelsSumTheSameBits) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  const CombineCase cases[] = {{300, 6, 2048, true, true, true},
                               {300, 6, 2048, false, false, false},
                               {300, 6, 2048, false, true, true},
                               {37, 8, 7168, true, true, true},
                               {64, 8, 300, false, false, true},
                               {300, 6, 2048, true, false, true, true},
                               {64, 8, 300, false, false, true, true}};
  for (const CombineCase &c : cases) {
    const int pairs = c.tokens * c.choices;
    std::vector<float> rows(size_t(pairs) * c.dim);
    for (float &v : rows)
      v = normal(rng) * 4.f;
    if (c.bf16Rows) // the rows as the device holds them
      for (float &v : rows)
        v = __bfloat162float(__float2bfloat16(v));
    const std::vector<int32_t> rowOfPair = shuffledRowOfPair(pairs, rng);
    std::vector<float> weights(static_cast<size_t>(pairs));
    for (float &w : weights)
      w = unit(rng);
    std::vector<float> plus(size_t(c.tokens) * c.dim);
    for (float &v : plus) // (exact in BF16 where it is held so)
      v = c.plusF32 ? normal(rng)
                    : __bfloat162float(__float2bfloat16(normal(rng)));
    const std::vector<float> aligned =
        combineOnDevice(c, rows, rowOfPair, weights, plus, 0);
    const std::vector<float> scalar =
        combineOnDevice(c, rows, rowOfPair, weights, plus, 1);
    int differ = 0;
    double worst = 0, largest = 0;
    for (int t = 0; t < c.tokens; ++t)
      for (int d = 0; d < c.dim; ++d) {
        const size_t at = size_t(t) * c.dim + d;
        differ += std::memcmp(&aligned[at], &scalar[at], sizeof(float)) != 0;
        double want = 0;
        for (int k = 0; k < c.choices; ++k) {
          const int row = rowOfPair[size_t(t) * c.choices + k];
          if (row < 0)
            continue;
          float v = rows[size_t(row) * c.dim + d];
          if (c.combineBf16)
            v = __bfloat162float(__float2bfloat16(v));
          want += double(weights[size_t(t) * c.choices + k]) * v;
        }
        if (c.withPlus)
          want += plus[at];
        worst = std::max(worst, std::fabs(aligned[at] - want));
        largest = std::max(largest, std::fabs(want));
      }
    EXPECT_EQ(differ, 0) << c.tokens << " tokens, " << c.choices
                         << " choices, dim " << c.dim;
    EXPECT_LE(worst, 1e-5 * std::max(1.0, largest))
        << c.tokens << " tokens, " << c.choices << " choices, dim " << c.dim;
  }
}

/// What a norm after a combine writes: the sums, the F32 rows (the plain
/// norm), their BF16 rows, and with quantize their codes and scales.
struct NormOutputs {
  std::vector<float> sum, y;
  std::vector<__nv_bfloat16> bf16;
  std::vector<uint8_t> codes;
  std::vector<float> scales;
};

bool sameBytes(const void *a, const void *b, size_t bytes) {
  return std::memcmp(a, b, bytes) == 0;
}

TEST(CudaExpertCombine, NormsMakingTheCombineInTheirAddGiveTheSameBits) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  // (Rows of a prefill, a warp a row: 64 or more; widths to 2048.)
  const CombineCase cases[] = {{300, 6, 2048, true, true, true},
                               {64, 8, 512, false, false, false},
                               {129, 6, 1024, true, false, true, true},
                               {200, 6, 2048, false, true, true}};
  for (const CombineCase &c : cases) {
    const int pairs = c.tokens * c.choices;
    const size_t n = size_t(c.tokens) * c.dim;
    std::vector<float> rows(size_t(pairs) * c.dim), x(n), gamma(size_t(c.dim));
    for (float &v : rows)
      v = normal(rng) * 4.f;
    for (float &v : x)
      v = normal(rng) * 8.f;
    for (float &v : gamma)
      v = 0.5f + unit(rng);
    const std::vector<int32_t> rowOfPair = shuffledRowOfPair(pairs, rng);
    std::vector<float> weights(static_cast<size_t>(pairs)), plus(n);
    for (float &w : weights)
      w = unit(rng);
    for (float &v : plus)
      v = normal(rng);
    void *dRowsData = nullptr;
    if (c.bf16Rows) {
      std::vector<__nv_bfloat16> held(rows.size());
      for (size_t i = 0; i < rows.size(); ++i)
        held[i] = __float2bfloat16(rows[i]);
      dRowsData = toDevice(held);
    } else {
      dRowsData = toDevice(rows);
    }
    void *dPlus = nullptr;
    if (c.withPlus && c.plusF32) {
      dPlus = toDevice(plus);
    } else if (c.withPlus) {
      std::vector<__nv_bfloat16> held(n);
      for (size_t i = 0; i < n; ++i)
        held[i] = __float2bfloat16(plus[i]);
      dPlus = toDevice(held);
    }
    int32_t *dRowOfPair = toDevice(rowOfPair);
    float *dWeights = toDevice(weights), *dX = toDevice(x),
          *dGamma = toDevice(gamma);
    CombinedRows combined;
    combined.expertOut = {dRowsData, c.bf16Rows};
    combined.rowOfPair = dRowOfPair, combined.weights = dWeights;
    combined.choices = c.choices, combined.combineBf16 = c.combineBf16;
    combined.plus = {dPlus, !c.plusF32};
    const float eps = 1e-6f;
    ASSERT_TRUE(normTakesCombinedRows(c.tokens, c.dim, {dX, false}, {dX, false},
                                      combined));
    // Fewer rows take a block a row, which does not make the combine.
    EXPECT_FALSE(
        normTakesCombinedRows(8, c.dim, {dX, false}, {dX, false}, combined));
    // quantize: rmsNormQuantizeRowsFp8, else addRmsNorm; fused: the
    // combine in the add, else combineExpertRows' rows added.
    auto run = [&](bool quantize, bool fused) {
      float *b = deviceArray<float>(n), *sum = deviceArray<float>(n),
            *y = deviceArray<float>(n);
      auto *bf16 = deviceArray<__nv_bfloat16>(n);
      auto *codes = deviceArray<__nv_fp8_e4m3>(n);
      float *scales = deviceArray<float>(n / 128 + 1);
      if (!fused)
        EXPECT_EQ(combineExpertRows(combined.expertOut, dRowOfPair, dWeights,
                                    c.tokens, c.choices, c.dim, c.combineBf16,
                                    b, nullptr, combined.plus),
                  cudaSuccess);
      const Operand bOperand{b, false};
      const CombinedRows *with = fused ? &combined : nullptr;
      EXPECT_EQ(quantize ? rmsNormQuantizeRowsFp8(
                               {dX, false}, &bOperand, {sum, false},
                               {dGamma, false}, eps, c.tokens, c.dim, y, codes,
                               scales, nullptr, bf16, 0, with)
                         : addRmsNorm({dX, false}, bOperand, {dGamma, false},
                                      eps, c.tokens, c.dim, {sum, false},
                                      {y, false}, nullptr, bf16, with),
                cudaSuccess);
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      NormOutputs out;
      out.sum = toHost(sum, n);
      out.y = toHost(y, n);
      out.bf16 = toHost(bf16, n);
      if (quantize) {
        out.codes = toHost(reinterpret_cast<uint8_t *>(codes), n);
        out.scales = toHost(scales, n / 128);
      }
      cudaFree(b), cudaFree(sum), cudaFree(y), cudaFree(bf16);
      cudaFree(codes), cudaFree(scales);
      return out;
    };
    for (bool quantize : {false, true}) {
      if (quantize && c.dim % 128 != 0)
        continue;
      const NormOutputs apart = run(quantize, false),
                        together = run(quantize, true);
      const std::string what = std::to_string(c.tokens) + " tokens, dim " +
                               std::to_string(c.dim) +
                               (quantize ? ", quantized" : "");
      EXPECT_TRUE(sameBytes(apart.sum.data(), together.sum.data(), n * 4))
          << what;
      EXPECT_TRUE(sameBytes(apart.y.data(), together.y.data(), n * 4)) << what;
      EXPECT_TRUE(sameBytes(apart.bf16.data(), together.bf16.data(), n * 2))
          << what;
      EXPECT_EQ(apart.codes, together.codes) << what;
      EXPECT_TRUE(sameBytes(apart.scales.data(), together.scales.data(),
                            apart.scales.size() * 4))
          << what;
      // The sums are x plus the combine (not x alone, nor zeros).
      double worst = 0;
      for (int t = 0; t < c.tokens; ++t)
        for (int d = 0; d < c.dim; d += 97) {
          double want = x[size_t(t) * c.dim + d];
          for (int k = 0; k < c.choices; ++k) {
            const int row = rowOfPair[size_t(t) * c.choices + k];
            if (row < 0)
              continue;
            float v = rows[size_t(row) * c.dim + d];
            if (c.bf16Rows || c.combineBf16)
              v = __bfloat162float(__float2bfloat16(v));
            want += double(weights[size_t(t) * c.choices + k]) * v;
          }
          if (c.withPlus)
            want += c.plusF32 ? plus[size_t(t) * c.dim + d]
                              : __bfloat162float(__float2bfloat16(
                                    plus[size_t(t) * c.dim + d]));
          worst = std::max(
              worst, std::fabs(together.sum[size_t(t) * c.dim + d] - want));
        }
      EXPECT_LE(worst, 1e-3) << what;
    }
    // Rows a block a row take no combine: the call says so.
    EXPECT_EQ(addRmsNorm({dX, false}, {dX, false}, {dGamma, false}, eps, 8,
                         c.dim, {dX, false}, {dX, false}, nullptr, nullptr,
                         &combined),
              cudaErrorInvalidValue);
    cudaFree(dRowsData), cudaFree(dRowOfPair), cudaFree(dWeights);
    cudaFree(dX), cudaFree(dGamma);
    if (dPlus)
      cudaFree(dPlus);
  }
}

} // namespace
