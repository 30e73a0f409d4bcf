// MLA outputs prepared for the FP8 products that alone read them
// (MlaProductFusions.h): on a CPU device that quantizes the inputs of the
// products whose weights the model stores in FP8 and, asked to, has its
// MLA calls write that quantization of their output (what the CUDA
// device's attention kernel would), the output projections read it and the
// logits are bit for bit those of the same device quantizing in the
// products. Needs MELT_TEST_FP8_POLICY_ARTIFACT (v3-tiny compiled with
// --precision=deepseek-v3) and MELT_TEST_FP8_POLICY_CHECKPOINT.
#include "Executor.h"
#include "Fp8PolicySessions.h"
#include "Model.h"
#include "QuantizingCpuDevice.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <vector>

using namespace melt::rt;

TEST(MlaProductFusions, OutputsPreparedForTheirProductsMatchTheKernels) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  QuantizingCpuDevice plain, preparing;
  preparing.preparesMlaOutputs = true;
  std::unique_ptr<DeviceModel> onPlain, onPreparing;
  ASSERT_FALSE(DeviceModel::create(*model, plain, onPlain));
  ASSERT_FALSE(DeviceModel::create(*model, preparing, onPreparing));
  uint32_t fusions = 0;
  for (uint32_t k : *onPreparing->forward().kernels())
    fusions += onPreparing->mlaProducts(k) != nullptr;
  EXPECT_GT(fusions, 0u) << "every MLA's output projection reads its value";
  std::vector<float> want = stepLogits(*onPlain),
                     have = stepLogits(*onPreparing);
  EXPECT_EQ(plain.preparedMlaOutputs, 0);
  EXPECT_GT(preparing.preparedMlaOutputs, 0);
  // Every output prepared was read by its product; the outputs' own rows
  // were NaNs where nothing gathers them for the logit rows (the layers
  // before the last of a prompt's step), reaching no logit.
  EXPECT_GE(preparing.preparedProducts, preparing.preparedMlaOutputs);
  EXPECT_GT(preparing.unwrittenMlaOutputs, 0);
  expectSameLogits(have, want);
}

TEST(MlaProductFusions, CanBeTurnedOff) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  setenv("MELT_FUSE_MLA_QUANTIZE", "0", 1);
  QuantizingCpuDevice preparing;
  preparing.preparesMlaOutputs = true;
  std::unique_ptr<DeviceModel> dm;
  Status s = DeviceModel::create(*model, preparing, dm);
  unsetenv("MELT_FUSE_MLA_QUANTIZE");
  ASSERT_FALSE(s) << s.message();
  for (uint32_t k : *dm->forward().kernels())
    EXPECT_EQ(dm->mlaProducts(k), nullptr);
}
