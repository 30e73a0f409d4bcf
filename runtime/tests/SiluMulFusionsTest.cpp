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
#include "Model.h"
#include "QuantizingCpuDevice.h"
#include "Session.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <numeric>
#include <vector>

using namespace melt::rt;

namespace {

std::unique_ptr<Model> loadModel() {
  const char *artifact = std::getenv("MELT_TEST_FP8_POLICY_ARTIFACT");
  const char *checkpoint = std::getenv("MELT_TEST_FP8_POLICY_CHECKPOINT");
  if (!artifact || !checkpoint)
    return nullptr;
  std::unique_ptr<Model> model;
  Status s = Model::load(artifact, checkpoint, model, /*keepHostData=*/true);
  EXPECT_FALSE(s) << s.message();
  return model;
}

/// Two sequences, prefills of 20 and 6 tokens, then 4 decode steps of both
/// together; every step's logits.
std::vector<float> run(const DeviceModel &dm) {
  std::unique_ptr<Session> session;
  Status s = Session::create(dm, 64, 64, session);
  EXPECT_FALSE(s) << s.message();
  if (s)
    return {};
  int32_t ids[2] = {0, 0};
  std::vector<float> all;
  for (int32_t &id : ids)
    EXPECT_FALSE(session->addSequence(id));
  for (int step = 0; step < 5; ++step)
    for (int i = 0; i < 2; ++i) {
      std::vector<int32_t> tokens(step ? 1 : (i ? 6 : 20));
      std::iota(tokens.begin(), tokens.end(), 3 + 11 * i + 7 * step);
      s = session->append(ids[i], tokens.data(), tokens.size());
      EXPECT_FALSE(s) << s.message();
      const float *logits = nullptr;
      size_t vocab = 0;
      EXPECT_FALSE(session->logits(ids[i], logits, vocab));
      if (logits)
        all.insert(all.end(), logits, logits + vocab);
    }
  return all;
}

} // namespace

TEST(SiluMulFusions, ProductsThatTakeTheSiluMulMatchItsKernel) {
  std::unique_ptr<Model> model = loadModel();
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
  std::vector<float> want = run(*onPlain), have = run(*onFusing);
  ASSERT_FALSE(want.empty());
  EXPECT_GT(fusing.fusedProducts, 0);
  ASSERT_EQ(have.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_EQ(have[i], want[i]) << "logit " << i;
}

TEST(SiluMulFusions, CanBeTurnedOff) {
  std::unique_ptr<Model> model = loadModel();
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
