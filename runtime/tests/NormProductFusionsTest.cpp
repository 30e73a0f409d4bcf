// Norms that prepare the input of the FP8 products reading their value
// (NormProductFusions.h): on a CPU device that quantizes the inputs of the
// products whose weights the model stores in FP8 and, asked to, does that
// quantization in the norms that make them (what the CUDA device's norm
// kernel does for many rows), the logits are bit for bit the plain CPU
// device's; the norms before the attention's down projection (alone and
// with the residual add) and before the query's up projection prepare,
// the router's norm does not (the router reads its value). Under ASan this
// also checks that what was prepared lives until its products ran. A MoE
// layer's input norm prepares what its router and experts read, attached
// to its value until both have read it, the logits bit for bit the same;
// where nothing else reads its rows (its shared expert in the experts'
// call) they are left NaNs, the logits still the same.
// Needs
// MELT_TEST_FP8_POLICY_ARTIFACT (v3-tiny compiled with
// --precision=deepseek-v3) and MELT_TEST_FP8_POLICY_CHECKPOINT.
#include "CpuDevice.h"
#include "Executor.h"
#include "Fp8PolicySessions.h"
#include "Model.h"
#include "QuantizingCpuDevice.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <vector>

using namespace melt::rt;

TEST(NormProductFusions, NormsThatPrepareTheProductsInputMatchTheKernels) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  CpuDevice plain;
  QuantizingCpuDevice preparing;
  preparing.preparesInNorms = true;
  std::unique_ptr<DeviceModel> onPlain, onPreparing;
  ASSERT_FALSE(DeviceModel::create(*model, plain, onPlain));
  ASSERT_FALSE(DeviceModel::create(*model, preparing, onPreparing));
  // The plain device quantizes nothing itself: no folds, no such norms.
  uint32_t norms = 0, plainNorms = 0;
  for (uint32_t k : *onPreparing->forward().kernels()) {
    norms += onPreparing->normProducts(k) != nullptr;
    plainNorms += onPlain->normProducts(k) != nullptr;
  }
  EXPECT_EQ(plainNorms, 0u);
  EXPECT_GT(norms, 0u);
  std::vector<float> want = stepLogits(*onPlain),
                     have = stepLogits(*onPreparing);
  EXPECT_GT(preparing.preparingNorms, 0);
  // Every product of what was prepared multiplied it.
  EXPECT_GE(preparing.preparedProducts, preparing.preparingNorms);
  // The norms' own rows were NaNs (nothing but the products reads them):
  // no NaN reached the logits.
  EXPECT_EQ(preparing.unwrittenNorms, preparing.preparingNorms);
  expectSameLogits(have, want);
}

TEST(NormProductFusions, CanBeTurnedOff) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  setenv("MELT_FUSE_NORM_QUANTIZE", "0", 1);
  QuantizingCpuDevice preparing;
  preparing.preparesInNorms = true;
  std::unique_ptr<DeviceModel> dm;
  Status s = DeviceModel::create(*model, preparing, dm);
  unsetenv("MELT_FUSE_NORM_QUANTIZE");
  ASSERT_FALSE(s) << s.message();
  for (uint32_t k : *dm->forward().kernels())
    EXPECT_EQ(dm->normProducts(k), nullptr);
}

TEST(NormProductFusions, MoeNormsPrepareWhatTheRouterAndExpertsRead) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  // The experts quantize their input on both devices (the same values).
  for (bool sharedInOneCall : {false, true}) {
    SCOPED_TRACE(sharedInOneCall ? "shared expert in the experts' call"
                                 : "shared expert apart");
    QuantizingCpuDevice plain(false, true, sharedInOneCall),
        preparing(false, true, sharedInOneCall);
    preparing.preparesForExpertsInNorms = true;
    std::unique_ptr<DeviceModel> onPlain, onPreparing;
    ASSERT_FALSE(DeviceModel::create(*model, plain, onPlain));
    ASSERT_FALSE(DeviceModel::create(*model, preparing, onPreparing));
    uint32_t norms = 0;
    for (uint32_t k : *onPreparing->forward().kernels())
      norms += onPreparing->normExperts(k) != nullptr;
    EXPECT_GT(norms, 0u);
    std::vector<float> want = stepLogits(*onPlain),
                       have = stepLogits(*onPreparing);
    EXPECT_GT(preparing.expertNorms, 0);
    EXPECT_EQ(plain.expertNorms, 0);
    // Each prepared value read by its router and its experts while
    // attached, and detached after.
    EXPECT_GE(preparing.attachedLinearReads, preparing.expertNorms);
    EXPECT_EQ(preparing.attachedExpertReads, preparing.expertNorms);
    EXPECT_TRUE(preparing.nothingAttached());
    // The shared expert's gate and up read the norm's rows apart; in the
    // experts' call (a decode step's token) nothing reads them but through
    // what the norm prepared: their NaNs reach no logit.
    if (sharedInOneCall) {
      EXPECT_GT(preparing.unwrittenExpertNorms, 0);
      EXPECT_LT(preparing.unwrittenExpertNorms, preparing.expertNorms);
    } else {
      EXPECT_EQ(preparing.unwrittenExpertNorms, 0);
    }
    expectSameLogits(have, want);
  }
}
