// A MoE layer's shared expert in the routed experts' call
// (SharedExpertFusions.h): on a CPU device with the CUDA device's FP8
// products that takes one token's shared expert into the experts' call
// (QuantizingCpuDevice), the executor finds each MoE layer's group, runs
// it in one call at the decode steps (one token) and as its kernels at the
// prefills, and the logits are bit for bit those of the same device
// running the kernels; under ASan this also checks that the values the
// call reads live until it has read them. Needs
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

namespace {

/// MoEExperts kernels of @forward (with `logitRowsOnly`, those a prefill
/// runs on its logit rows alone: one token).
size_t moeLayers(const DeviceModel &dm, bool logitRowsOnly = false) {
  size_t n = 0;
  for (uint32_t k : *dm.forward().kernels())
    n += dm.model().artifact().model().kernels()->Get(k)->kind() ==
             fb::KernelKind::MoEExperts &&
         (!logitRowsOnly || dm.logitOnly().kernels.count(k));
  return n;
}

} // namespace

TEST(SharedExpertFusions, OneCallAtDecodeStepsGivesTheKernelsLogits) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  QuantizingCpuDevice apart(true, true, /*fusesSharedExpert=*/false);
  QuantizingCpuDevice together(true, true, /*fusesSharedExpert=*/true);
  std::unique_ptr<DeviceModel> onApart, onTogether;
  ASSERT_FALSE(DeviceModel::create(*model, apart, onApart));
  ASSERT_FALSE(DeviceModel::create(*model, together, onTogether));
  // Every MoE layer's group is found (v3-tiny's: its two MoE layers).
  ASSERT_GT(moeLayers(*onTogether), 0u);
  EXPECT_EQ(onTogether->sharedExpertGroups(), moeLayers(*onTogether));
  std::vector<float> want = stepLogits(*onApart),
                     have = stepLogits(*onTogether);
  EXPECT_EQ(apart.sharedExpertCalls, 0);
  // Two sequences' four decode steps, each through every MoE layer, and
  // their prefills' last MoE layer, run on the logit row alone.
  EXPECT_EQ(together.sharedExpertCalls,
            int(8 * moeLayers(*onTogether) +
                2 * moeLayers(*onTogether, /*logitRowsOnly=*/true)));
  expectSameLogits(have, want);
}

// Without its quantize pair folded, the shared expert's down product reads
// the dequantize kernel's value: no group (the pair would have to run).
TEST(SharedExpertFusions, NoneWhereTheDownInputIsQuantizedApart) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  CpuDevice plain;
  std::unique_ptr<DeviceModel> dm;
  ASSERT_FALSE(DeviceModel::create(*model, plain, dm));
  EXPECT_EQ(dm->sharedExpertGroups(), 0u);
}

TEST(SharedExpertFusions, CanBeTurnedOff) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  setenv("MELT_FUSE_SHARED_EXPERT", "0", 1);
  QuantizingCpuDevice together(true, true, true);
  std::unique_ptr<DeviceModel> dm;
  Status s = DeviceModel::create(*model, together, dm);
  unsetenv("MELT_FUSE_SHARED_EXPERT");
  ASSERT_FALSE(s) << s.message();
  EXPECT_EQ(dm->sharedExpertGroups(), 0u);
  std::vector<float> logits = stepLogits(*dm);
  EXPECT_EQ(together.sharedExpertCalls, 0);
}
