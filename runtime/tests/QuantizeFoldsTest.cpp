// The activation quantization a device's FP8 products do themselves
// (QuantizeFolds.h): on a CPU device that quantizes the inputs of the
// products whose weights the model stores in FP8 (what the CUDA device's
// FP8 GEMMs do), the quantize/dequantize pairs in front of those products
// are left out, the pairs in front of the experts stay, and the logits are
// bit for bit the plain CPU device's. Needs MELT_TEST_FP8_POLICY_ARTIFACT
// (v3-tiny compiled with --precision=deepseek-v3) and
// MELT_TEST_FP8_POLICY_CHECKPOINT.
#include "CpuDevice.h"
#include "Executor.h"
#include "Model.h"
#include "QuantizingCpuDevice.h"
#include "Session.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <vector>

using namespace melt::rt;

namespace {

struct Fixture {
  std::unique_ptr<Model> model;
  bool load() {
    const char *artifact = std::getenv("MELT_TEST_FP8_POLICY_ARTIFACT");
    const char *checkpoint = std::getenv("MELT_TEST_FP8_POLICY_CHECKPOINT");
    if (!artifact || !checkpoint)
      return false;
    Status s = Model::load(artifact, checkpoint, model, /*keepHostData=*/true);
    EXPECT_FALSE(s) << s.message();
    return !s;
  }
};

/// A prefill of 20 tokens and 4 decode steps; every step's logits.
std::vector<float> run(const DeviceModel &dm) {
  std::unique_ptr<Session> session;
  Status s = Session::create(dm, 64, 64, session);
  EXPECT_FALSE(s) << s.message();
  if (s)
    return {};
  int32_t id = 0;
  EXPECT_FALSE(session->addSequence(id));
  std::vector<int32_t> prompt(20);
  std::iota(prompt.begin(), prompt.end(), 3);
  std::vector<float> all;
  for (int step = 0; step < 5; ++step) {
    std::vector<int32_t> tokens =
        step == 0 ? prompt : std::vector<int32_t>{int32_t(7 * step + 1)};
    s = session->append(id, tokens.data(), tokens.size());
    EXPECT_FALSE(s) << s.message();
    const float *logits = nullptr;
    size_t vocab = 0;
    EXPECT_FALSE(session->logits(id, logits, vocab));
    if (logits)
      all.insert(all.end(), logits, logits + vocab);
  }
  return all;
}

size_t dequantizeKernels(const DeviceModel &dm) {
  const fb::Model &m = dm.model().artifact().model();
  size_t n = 0;
  for (uint32_t k : *dm.forward().kernels())
    n += m.kernels()->Get(k)->kind() == fb::KernelKind::Dequantize;
  return n;
}

} // namespace

TEST(QuantizeFolds, ProductsThatQuantizeTheirInputMatchThePairs) {
  Fixture f;
  if (!f.load())
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  CpuDevice plain;
  QuantizingCpuDevice quantizing;
  std::unique_ptr<DeviceModel> onPlain, onQuantizing;
  ASSERT_FALSE(DeviceModel::create(*f.model, plain, onPlain));
  ASSERT_FALSE(DeviceModel::create(*f.model, quantizing, onQuantizing));
  // The plain device folds nothing; the other folds the pairs in front of
  // the attention projections and the dense MLP, not those the experts
  // read.
  EXPECT_EQ(onPlain->foldedPairs(), 0u);
  EXPECT_GT(onQuantizing->foldedPairs(), 0u);
  EXPECT_LT(onQuantizing->foldedPairs(), dequantizeKernels(*onQuantizing));
  std::printf("%zu of %zu quantize/dequantize pairs folded\n",
              onQuantizing->foldedPairs(), dequantizeKernels(*onQuantizing));
  std::vector<float> want = run(*onPlain), have = run(*onQuantizing);
  ASSERT_FALSE(want.empty());
  EXPECT_GT(quantizing.quantizedProducts, 0);
  ASSERT_EQ(have.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_EQ(have[i], want[i]) << "logit " << i;
}

TEST(QuantizeFolds, CanBeTurnedOff) {
  Fixture f;
  if (!f.load())
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  setenv("MELT_FOLD_QUANTIZE", "0", 1);
  QuantizingCpuDevice quantizing;
  std::unique_ptr<DeviceModel> dm;
  Status s = DeviceModel::create(*f.model, quantizing, dm);
  unsetenv("MELT_FOLD_QUANTIZE");
  ASSERT_FALSE(s) << s.message();
  EXPECT_EQ(dm->foldedPairs(), 0u);
}
