// The activation quantization a device's FP8 products do themselves
// (QuantizeFolds.h): on a CPU device that quantizes the inputs of the
// products whose weights the model stores in FP8 (what the CUDA device's
// FP8 GEMMs do), the quantize/dequantize pairs in front of those products
// are left out, the pairs in front of the experts stay (unless the device
// quantizes the experts' input too), and the logits are bit for bit the
// plain CPU device's. Needs MELT_TEST_FP8_POLICY_ARTIFACT
// (v3-tiny compiled with --precision=deepseek-v3) and
// MELT_TEST_FP8_POLICY_CHECKPOINT.
#include "CpuDevice.h"
#include "Executor.h"
#include "Fp8PolicySessions.h"
#include "Model.h"
#include "QuantizingCpuDevice.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

using namespace melt::rt;

namespace {

size_t dequantizeKernels(const DeviceModel &dm) {
  const fb::Model &m = dm.model().artifact().model();
  size_t n = 0;
  for (uint32_t k : *dm.forward().kernels())
    n += m.kernels()->Get(k)->kind() == fb::KernelKind::Dequantize;
  return n;
}

} // namespace

TEST(QuantizeFolds, ProductsThatQuantizeTheirInputMatchThePairs) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  CpuDevice plain;
  QuantizingCpuDevice quantizing;
  std::unique_ptr<DeviceModel> onPlain, onQuantizing;
  ASSERT_FALSE(DeviceModel::create(*model, plain, onPlain));
  ASSERT_FALSE(DeviceModel::create(*model, quantizing, onQuantizing));
  // The plain device folds nothing; the other folds the pairs in front of
  // the attention projections and the dense MLP, not those the experts
  // read.
  EXPECT_EQ(onPlain->foldedPairs(), 0u);
  EXPECT_GT(onQuantizing->foldedPairs(), 0u);
  EXPECT_LT(onQuantizing->foldedPairs(), dequantizeKernels(*onQuantizing));
  std::printf("%zu of %zu quantize/dequantize pairs folded\n",
              onQuantizing->foldedPairs(), dequantizeKernels(*onQuantizing));
  std::vector<float> want = stepLogits(*onPlain),
                     have = stepLogits(*onQuantizing);
  EXPECT_GT(quantizing.quantizedProducts, 0);
  expectSameLogits(have, want);
}

TEST(QuantizeFolds, ExpertsThatQuantizeTheirInputMatchThePairs) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  CpuDevice plain;
  QuantizingCpuDevice products, productsAndExperts(false, true);
  std::unique_ptr<DeviceModel> onPlain, onProducts, onBoth;
  ASSERT_FALSE(DeviceModel::create(*model, plain, onPlain));
  ASSERT_FALSE(DeviceModel::create(*model, products, onProducts));
  ASSERT_FALSE(DeviceModel::create(*model, productsAndExperts, onBoth));
  // The pairs in front of the experts fold too: every pair, here.
  EXPECT_GT(onBoth->foldedPairs(), onProducts->foldedPairs());
  EXPECT_EQ(onBoth->foldedPairs(), dequantizeKernels(*onBoth));
  std::vector<float> want = stepLogits(*onPlain), have = stepLogits(*onBoth);
  EXPECT_GT(productsAndExperts.quantizedExperts, 0);
  EXPECT_EQ(products.quantizedExperts, 0);
  expectSameLogits(have, want);
}

TEST(QuantizeFolds, CanBeTurnedOff) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  setenv("MELT_FOLD_QUANTIZE", "0", 1);
  QuantizingCpuDevice quantizing;
  std::unique_ptr<DeviceModel> dm;
  Status s = DeviceModel::create(*model, quantizing, dm);
  unsetenv("MELT_FOLD_QUANTIZE");
  ASSERT_FALSE(s) << s.message();
  EXPECT_EQ(dm->foldedPairs(), 0u);
}
