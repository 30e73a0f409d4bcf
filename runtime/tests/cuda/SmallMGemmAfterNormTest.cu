// A one-row RMSNorm (or add and norm) and the small-M product of its y as
// one kernel (smallMGemmAfterNorm): every block normalizes the row itself,
// block 0 stores y and the sum. Against the two kernels it replaces (the norm
// kernel, then smallMGemm of the y it wrote), bit for bit: the sum, y and the
// product. BF16 and F32 weights, rows that fit the registers and a
// DeepSeek-V3 row that does not, a sum stored in BF16, a few output rows and
// many, operands in BF16. Skips without a device.
#include "cuda/Elementwise.h"
#include "cuda/SmallMGemm.h"

#include "CudaTestUtil.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

struct NormProductCase {
  int n, k;
  bool add, bf16Weights, bf16Sum, bf16Inputs = false;
};

/// Device buffers of one case: the norm's operands, its two outputs and
/// the product's, for the fused kernel and for the two it replaces.
struct Buffers {
  float *gamma, *y, *out;
  void *x, *b, *w, *sum;
};

class SmallMGemmAfterNorm : public testing::TestWithParam<NormProductCase> {};

TEST_P(SmallMGemmAfterNorm, MatchesTheNormThenTheProduct) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  const NormProductCase c = GetParam();
  std::mt19937 rng(uint32_t(c.n * 31 + c.k));
  const std::vector<float> x = normalValues(size_t(c.k), 1.f, rng),
                           b = normalValues(size_t(c.k), 0.5f, rng),
                           gamma = normalValues(size_t(c.k), 1.f, rng),
                           w = normalValues(size_t(c.n) * c.k, 0.05f, rng);
  int multiprocessors = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&multiprocessors,
                                   cudaDevAttrMultiProcessorCount, 0),
            cudaSuccess);

  auto run = [&](bool fused, NormProductOutputs &o) {
    Buffers d{};
    d.x = valuesOnDevice(x, c.bf16Inputs);
    d.b = valuesOnDevice(b, c.bf16Inputs);
    d.gamma = toDevice(gamma);
    d.y = deviceArray<float>(size_t(c.k));
    d.out = deviceArray<float>(size_t(c.n));
    d.sum = deviceArray<float>(size_t(c.k));
    d.w = valuesOnDevice(w, c.bf16Weights);
    const Operand xOp{d.x, c.bf16Inputs},
        bOp{c.add ? d.b : nullptr, c.bf16Inputs}, gammaOp{d.gamma, false};
    const Result sumOut{c.add ? d.sum : nullptr, c.bf16Sum}, yOut{d.y, false};
    const float eps = 1e-6f;
    if (fused) {
      const RowNormOperands norm{xOp, bOp, sumOut, gammaOp, eps, yOut};
      ASSERT_TRUE(smallMGemmAfterNormFits(d.w, c.bf16Weights, c.k));
      ASSERT_EQ(smallMGemmAfterNorm(norm, d.w, c.bf16Weights, c.n, c.k,
                                    Result{d.out, false}, multiprocessors,
                                    nullptr),
                cudaSuccess);
    } else {
      ASSERT_EQ(c.add ? addRmsNorm(xOp, bOp, gammaOp, eps, 1, c.k, sumOut, yOut,
                                   nullptr)
                      : rmsNorm(xOp, gammaOp, eps, 1, c.k, yOut, nullptr),
                cudaSuccess);
      ASSERT_EQ(smallMGemm(d.y, d.w, c.bf16Weights, 1, c.n, c.k,
                           Result{d.out, false}, multiprocessors, nullptr),
                cudaSuccess);
    }
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    o.y = toHost(d.y, size_t(c.k));
    o.out = toHost(d.out, size_t(c.n));
    if (c.add)
      o.sum = hostValues(d.sum, c.bf16Sum, size_t(c.k));
    for (void *p :
         {d.x, d.b, static_cast<void *>(d.gamma), static_cast<void *>(d.y),
          static_cast<void *>(d.out), d.sum, d.w})
      cudaFree(p);
  };
  NormProductOutputs fusedOut, apartOut;
  run(true, fusedOut);
  run(false, apartOut);
  expectSameNormProduct(fusedOut, apartOut, c.add, size_t(c.n));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SmallMGemmAfterNorm,
    testing::Values(
        // mini's attention input norm and its fused q_a / kv_a down.
        NormProductCase{2112, 2048, true, true, false},
        // mini's query norm and q_b.
        NormProductCase{3072, 1536, false, true, false},
        // Operands in BF16 (a product's BF16 output added, normalized).
        NormProductCase{2112, 2048, true, true, false, true},
        NormProductCase{3072, 1536, false, true, false, true},
        // A MoE router's 64 experts (rows split over more warps).
        NormProductCase{64, 2048, true, true, false},
        // DeepSeek-V3's hidden size: the row read twice, not held.
        NormProductCase{96, 7168, true, true, false},
        // F32 weights, a sum stored in BF16.
        NormProductCase{200, 512, true, false, true},
        NormProductCase{33, 264, false, false, false}),
    [](const testing::TestParamInfo<NormProductCase> &info) {
      const NormProductCase &c = info.param;
      return "N" + std::to_string(c.n) + "K" + std::to_string(c.k) +
             (c.add ? "Add" : "") + (c.bf16Weights ? "Bf16W" : "F32W") +
             (c.bf16Sum ? "Bf16Sum" : "") + (c.bf16Inputs ? "Bf16In" : "");
    });

TEST(SmallMGemmAfterNormRefuses, RowsWiderThanItsSharedMemory) {
  alignas(16) static float weight[16];
  EXPECT_TRUE(smallMGemmAfterNormFits(weight, true, 8));
  EXPECT_FALSE(smallMGemmAfterNormFits(
      weight, true, int(kMaxNormedRowBytes / sizeof(float)) + 8));
  EXPECT_FALSE(smallMGemmAfterNormFits(weight, true, 12));    // K % 8
  EXPECT_FALSE(smallMGemmAfterNormFits(weight + 1, true, 8)); // unaligned
}

} // namespace
