// A one-row RMSNorm (or add and norm) and the FP8 product of its y on the
// few-tokens kernel with its weights in registers, as one kernel
// (fp8FewTokensAfterNorm): every block normalizes the row itself, block 0
// stores y and the sum. Against the two kernels it replaces (the norm
// kernel, then fp8FewTokensInRegistersFromF32 of the y it wrote), bit for
// bit: the sum, y and the product. mini's shapes, a weight stored with its K
// padded, a sum stored in BF16, operands in BF16, and fewer blocks than
// 16-row tiles. Skips without a device.
#include "cuda/Elementwise.h"
#include "cuda/Fp8SmallM.h"

#include "CudaTestUtil.h"

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

struct Fp8NormProductCase {
  int n, kIn, k;
  bool add, bf16Sum = false, bf16Inputs = false;
  int multiprocessors = 0; // 0: the device's
};

class Fp8FewTokensAfterNorm
    : public testing::TestWithParam<Fp8NormProductCase> {};

TEST_P(Fp8FewTokensAfterNorm, MatchesTheNormThenTheProduct) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  const Fp8NormProductCase c = GetParam();
  ASSERT_TRUE(fp8FewTokensAfterNormFit(c.n, c.kIn, c.k));
  std::mt19937 rng(uint32_t(c.n * 31 + c.k));
  const std::vector<float> x = normalValues(size_t(c.kIn), 1.f, rng),
                           b = normalValues(size_t(c.kIn), 0.5f, rng),
                           gamma = normalValues(size_t(c.kIn), 1.f, rng);
  // The weight as a checkpoint ships it (zeros beyond kIn where padded).
  std::vector<__nv_fp8_e4m3> w(size_t(c.n) * c.k, __nv_fp8_e4m3(0.f));
  std::normal_distribution<float> normal(0.f, 100.f);
  for (int r = 0; r < c.n; ++r)
    for (int col = 0; col < c.kIn; ++col)
      w[size_t(r) * c.k + col] = __nv_fp8_e4m3(normal(rng));
  std::uniform_real_distribution<float> scaleDist(0.25f, 4.f);
  std::vector<float> wScales(size_t((c.n + 127) / 128) * (c.k / 128));
  for (float &s : wScales)
    s = scaleDist(rng) * 1e-3f;
  int multiprocessors = c.multiprocessors;
  if (multiprocessors == 0)
    ASSERT_EQ(cudaDeviceGetAttribute(&multiprocessors,
                                     cudaDevAttrMultiProcessorCount, 0),
              cudaSuccess);
  __nv_fp8_e4m3 *dw = toDevice(w);
  float *dScales = toDevice(wScales);

  auto run = [&](bool fused, NormProductOutputs &o) {
    void *dx = valuesOnDevice(x, c.bf16Inputs),
         *db = valuesOnDevice(b, c.bf16Inputs);
    float *dGamma = toDevice(gamma), *dy = deviceArray<float>(size_t(c.kIn)),
          *dOut = deviceArray<float>(size_t(c.n));
    void *dSum = deviceArray<float>(size_t(c.kIn));
    const Operand xOp{dx, c.bf16Inputs},
        bOp{c.add ? db : nullptr, c.bf16Inputs}, gammaOp{dGamma, false};
    const Result sumOut{c.add ? dSum : nullptr, c.bf16Sum}, yOut{dy, false};
    const float eps = 1e-6f;
    if (fused) {
      const RowNormOperands norm{xOp, bOp, sumOut, gammaOp, eps, yOut};
      ASSERT_EQ(fp8FewTokensAfterNorm(norm, c.kIn, dw, dScales, dOut, c.n, c.k,
                                      multiprocessors, nullptr),
                cudaSuccess);
    } else {
      ASSERT_EQ(c.add ? addRmsNorm(xOp, bOp, gammaOp, eps, 1, c.kIn, sumOut,
                                   yOut, nullptr)
                      : rmsNorm(xOp, gammaOp, eps, 1, c.kIn, yOut, nullptr),
                cudaSuccess);
      ASSERT_EQ(fp8FewTokensInRegistersFromF32(dy, nullptr, c.kIn, dw, dScales,
                                               dOut, 1, c.n, c.k,
                                               multiprocessors, nullptr),
                cudaSuccess);
    }
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    o.y = toHost(dy, size_t(c.kIn));
    o.out = toHost(dOut, size_t(c.n));
    if (c.add)
      o.sum = hostValues(dSum, c.bf16Sum, size_t(c.kIn));
    for (void *p : {dx, db, static_cast<void *>(dGamma),
                    static_cast<void *>(dy), static_cast<void *>(dOut), dSum})
      cudaFree(p);
  };
  NormProductOutputs fusedOut, apartOut;
  run(true, fusedOut);
  run(false, apartOut);
  expectSameNormProduct(fusedOut, apartOut, c.add, size_t(c.n));
  cudaFree(dw), cudaFree(dScales);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Fp8FewTokensAfterNorm,
    testing::Values(
        // mini's attention input norm and its fused q_a / kv_a down.
        Fp8NormProductCase{2112, 2048, 2048, true},
        // mini's query norm and q_b.
        Fp8NormProductCase{3072, 1536, 1536, false},
        // mini's dense MLP: its norm and the gate.
        Fp8NormProductCase{10944, 2048, 2048, true},
        // A weight stored with its K padded, a sum in BF16.
        Fp8NormProductCase{2048, 1408, 1536, true, true},
        // Operands in BF16.
        Fp8NormProductCase{2112, 2048, 2048, true, false, true},
        // Three blocks taking the tiles in turn.
        Fp8NormProductCase{3072, 1536, 1536, true, false, false, 3}),
    [](const testing::TestParamInfo<Fp8NormProductCase> &info) {
      const Fp8NormProductCase &c = info.param;
      return "N" + std::to_string(c.n) + "K" + std::to_string(c.kIn) + "Of" +
             std::to_string(c.k) + (c.add ? "Add" : "") +
             (c.bf16Sum ? "Bf16Sum" : "") + (c.bf16Inputs ? "Bf16In" : "") +
             (c.multiprocessors ? "On" + std::to_string(c.multiprocessors)
                                : "");
    });

TEST(Fp8FewTokensAfterNormRefuses, RowsItCannotHold) {
  EXPECT_TRUE(fp8FewTokensAfterNormFit(2112, 2048, 2048));
  EXPECT_FALSE(fp8FewTokensAfterNormFit(2112, 2052, 2048));   // kIn > k
  EXPECT_FALSE(fp8FewTokensAfterNormFit(2112, 2046, 2048));   // kIn % 4
  EXPECT_FALSE(fp8FewTokensAfterNormFit(2100, 2048, 2048));   // n % 16
  EXPECT_FALSE(fp8FewTokensAfterNormFit(2112, 13000, 13056)); // 52 KB row
}

} // namespace
