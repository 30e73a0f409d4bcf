// The small-M product (smallMGemm: y[M, N] = x[M, K] w[N, K]^T, x F32, w
// BF16 or F32; x rounded to BF16 as it is read where w is BF16) against the
// same sums in double on the host, within F32's
// rounding of a sum of K terms. Its ways of splitting a row over a block's
// warps: a row a warp (many rows), two to eight warps a row (few rows),
// and a row a block split eight ways where a row is 1024 loads or more
// (mini's dense down, K 10944; K 8200 leaves a part of a load's eighth).
// And an MLP's gate, up and SiLU-mul of one row as one kernel
// (smallMGemmSiluMulOfPair) against smallMGemm twice, then the elementwise
// SiLU-mul, bit for bit. Skips without a device.
#include "cuda/Elementwise.h"
#include "cuda/SmallMGemm.h"

#include "CudaTestUtil.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

struct ProductCase {
  int m, n, k;
  bool bf16Weights;
};

class SmallMGemmProduct : public testing::TestWithParam<ProductCase> {};

TEST_P(SmallMGemmProduct, MatchesTheSumsInDouble) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  const ProductCase c = GetParam();
  std::mt19937 rng(uint32_t(c.m * 7 + c.n * 31 + c.k));
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(size_t(c.m) * c.k), w(size_t(c.n) * c.k);
  for (float &v : x)
    v = normal(rng);
  for (float &v : w)
    v = 0.05f * normal(rng);
  // The weights as the kernel reads them (BF16: rounded), and x (with BF16
  // weights rounded to BF16 as it is read: Device::linear's contract).
  std::vector<__nv_bfloat16> wBf16;
  std::vector<float> xRead = x;
  if (c.bf16Weights) {
    wBf16.resize(w.size());
    for (size_t i = 0; i < w.size(); ++i) {
      wBf16[i] = __float2bfloat16(w[i]);
      w[i] = __bfloat162float(wBf16[i]);
    }
    for (float &v : xRead)
      v = __bfloat162float(__float2bfloat16(v));
  }
  int multiprocessors = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&multiprocessors,
                                   cudaDevAttrMultiProcessorCount, 0),
            cudaSuccess);
  float *dx = toDevice(x);
  void *dw = c.bf16Weights ? static_cast<void *>(toDevice(wBf16))
                           : static_cast<void *>(toDevice(w));
  float *dy = deviceArray<float>(size_t(c.m) * c.n);
  ASSERT_TRUE(smallMGemmFits(dx, dw, c.bf16Weights, c.m, c.k));
  ASSERT_EQ(smallMGemm(dx, dw, c.bf16Weights, c.m, c.n, c.k, Result{dy, false},
                       multiprocessors, nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> y = toHost(dy, size_t(c.m) * c.n);
  for (void *p : {static_cast<void *>(dx), dw, static_cast<void *>(dy)})
    cudaFree(p);
  int wrong = 0;
  for (int r = 0; r < c.m; ++r)
    for (int j = 0; j < c.n; ++j) {
      double sum = 0, magnitude = 0;
      for (int i = 0; i < c.k; ++i) {
        const double term =
            double(xRead[size_t(r) * c.k + i]) * w[size_t(j) * c.k + i];
        sum += term;
        magnitude += std::fabs(term);
      }
      // F32 sums of K terms: a few units of F32's rounding of their
      // magnitudes, far below a term left out or counted twice.
      const double bound = 1e-5 * magnitude + 1e-30;
      const float got = y[size_t(r) * c.n + j];
      if (!(std::fabs(got - sum) <= bound) && ++wrong <= 5)
        ADD_FAILURE() << "y[" << r << ", " << j << "] = " << got
                      << ", the sum in double " << sum << " (bound " << bound
                      << ")";
    }
  EXPECT_EQ(wrong, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SmallMGemmProduct,
    testing::Values(
        // mini's dense down at batch 1: rows of 1368 loads, a row a block.
        ProductCase{1, 2048, 10944, true},
        // A row of 1025 loads (K 8200) in eighths that do not divide it.
        ProductCase{1, 37, 8200, true}, ProductCase{2, 37, 8200, true},
        // F32 weights of 1024 loads a row (K 4096).
        ProductCase{1, 40, 4096, false},
        // Below 1024 loads: mini's o_proj (split over warps) and its dense
        // gate/up (a row a warp), a few rows of tokens.
        ProductCase{1, 2048, 2048, true}, ProductCase{3, 10944, 2048, true},
        ProductCase{8, 64, 2048, false}),
    [](const testing::TestParamInfo<ProductCase> &info) {
      const ProductCase &c = info.param;
      return "M" + std::to_string(c.m) + "N" + std::to_string(c.n) + "K" +
             std::to_string(c.k) + (c.bf16Weights ? "Bf16W" : "F32W");
    });

struct PairCase {
  int n, k;
  bool bf16Weights, roundProducts;
};

class SmallMGemmSiluMulOfPair : public testing::TestWithParam<PairCase> {};

TEST_P(SmallMGemmSiluMulOfPair, IsTheTwoProductsThenTheSiluMul) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  const PairCase c = GetParam();
  std::mt19937 rng(uint32_t(c.n * 13 + c.k));
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(size_t(c.k)), gate(size_t(c.n) * c.k),
      up(size_t(c.n) * c.k);
  for (float &v : x)
    v = normal(rng);
  for (std::vector<float> *w : {&gate, &up})
    for (float &v : *w)
      v = 0.05f * normal(rng);
  auto weightOnDevice = [&](const std::vector<float> &w) -> void * {
    if (!c.bf16Weights)
      return toDevice(w);
    std::vector<__nv_bfloat16> rounded(w.size());
    for (size_t i = 0; i < w.size(); ++i)
      rounded[i] = __float2bfloat16(w[i]);
    return toDevice(rounded);
  };
  int multiprocessors = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&multiprocessors,
                                   cudaDevAttrMultiProcessorCount, 0),
            cudaSuccess);
  float *dx = toDevice(x);
  void *dGate = weightOnDevice(gate), *dUp = weightOnDevice(up);
  float *fused = deviceArray<float>(size_t(c.n)),
        *apart = deviceArray<float>(size_t(c.n));
  // The products' outputs as a Linear leaves them (F32, or BF16).
  const size_t outBytes = size_t(c.n) * (c.roundProducts ? 2 : 4);
  void *gateOut = deviceArray<char>(outBytes),
       *upOut = deviceArray<char>(outBytes);
  ASSERT_EQ(smallMGemmSiluMulOfPair(dx, dGate, dUp, c.bf16Weights, c.n, c.k,
                                    c.roundProducts, fused, multiprocessors,
                                    nullptr),
            cudaSuccess);
  ASSERT_EQ(smallMGemm(dx, dGate, c.bf16Weights, 1, c.n, c.k,
                       Result{gateOut, c.roundProducts}, multiprocessors,
                       nullptr),
            cudaSuccess);
  ASSERT_EQ(smallMGemm(dx, dUp, c.bf16Weights, 1, c.n, c.k,
                       Result{upOut, c.roundProducts}, multiprocessors,
                       nullptr),
            cudaSuccess);
  ASSERT_EQ(binary(Binary::SiluMul, Operand{gateOut, c.roundProducts},
                   Operand{upOut, c.roundProducts}, size_t(c.n),
                   Result{apart, false}, nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> have = toHost(fused, size_t(c.n)),
                           want = toHost(apart, size_t(c.n));
  for (void *p :
       {static_cast<void *>(dx), dGate, dUp, static_cast<void *>(fused),
        static_cast<void *>(apart), gateOut, upOut})
    cudaFree(p);
  EXPECT_EQ(differingBits(have, want), 0);
  EXPECT_NE(have.front(), have.back()); // not a row of zeros
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SmallMGemmSiluMulOfPair,
    testing::Values(
        // mini's dense MLP at batch 1 (a row a warp), its products' BF16
        // outputs and F32 ones.
        PairCase{10944, 2048, true, true}, PairCase{10944, 2048, true, false},
        // Few rows: each split over warps; wide rows split eight ways.
        PairCase{64, 2048, true, true}, PairCase{37, 8200, true, false},
        // F32 weights.
        PairCase{300, 512, false, false}),
    [](const testing::TestParamInfo<PairCase> &info) {
      const PairCase &c = info.param;
      return "N" + std::to_string(c.n) + "K" + std::to_string(c.k) +
             (c.bf16Weights ? "Bf16W" : "F32W") +
             (c.roundProducts ? "Bf16Products" : "");
    });

} // namespace
