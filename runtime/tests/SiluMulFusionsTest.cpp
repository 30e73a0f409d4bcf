// The MLPs' SiLU-muls a device's products compute as they read gate and up
// (SiluMulFusions.h): on a CPU device that quantizes the inputs of the
// products whose weights the model stores in FP8 and takes the SiLU-mul
// into those products (what the CUDA device's FP8 products do), the
// SiLU-mul kernels in front of them are left out and the logits are bit
// for bit the plain CPU device's; under ASan this also checks that gate
// and up live until the products have read them. Needs
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

TEST(SiluMulFusions, ProductsThatTakeTheSiluMulMatchItsKernel) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  CpuDevice plain;
  QuantizingCpuDevice fusing(/*fusesSiluMul=*/true);
  std::unique_ptr<DeviceModel> onPlain, onFusing;
  ASSERT_FALSE(DeviceModel::create(*model, plain, onPlain));
  ASSERT_FALSE(DeviceModel::create(*model, fusing, onFusing));
  // The dense MLP's and the shared experts' SiLU-muls (behind a folded
  // quantize pair); none on the plain device.
  uint32_t fused = 0, plainFused = 0;
  for (uint32_t k : *onFusing->forward().kernels()) {
    fused += onFusing->siluMulProducts(k) > 0;
    plainFused += onPlain->siluMulProducts(k) > 0;
  }
  EXPECT_EQ(plainFused, 0u);
  EXPECT_GT(fused, 0u);
  std::vector<float> want = stepLogits(*onPlain), have = stepLogits(*onFusing);
  EXPECT_GT(fusing.fusedProducts, 0);
  expectSameLogits(have, want);
}

TEST(SiluMulFusions, CanBeTurnedOff) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  setenv("MELT_FUSE_SILU_MUL", "0", 1);
  QuantizingCpuDevice fusing(/*fusesSiluMul=*/true);
  std::unique_ptr<DeviceModel> dm;
  Status s = DeviceModel::create(*model, fusing, dm);
  unsetenv("MELT_FUSE_SILU_MUL");
  ASSERT_FALSE(s) << s.message();
  for (uint32_t k : *dm->forward().kernels())
    EXPECT_EQ(dm->siluMulProducts(k), 0u);
}
