// Products only adds read, kept in BF16 (Bf16Addends.h): on a CPU device
// that multiplies the FP8-stored weights as the CUDA device does and,
// asked to, writes those products in BF16 and adds BF16 operands (what the
// CUDA device does past its few-token kernel), the logits are bit for bit
// the plain CPU device's (which widens nothing: it rounds the F32 products
// to BF16 values); the attention's output projections and the dense MLP's
// down projection are such products, the products norms or SiLU-muls read
// are not (with MELT_BF16_ADDENDS=1: off by default). Needs
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
#include <string>
#include <vector>

using namespace melt::rt;

namespace {

/// The names of the weights the BF16 addends multiply.
std::vector<std::string> addendWeights(const Model &model,
                                       const DeviceModel &dm) {
  std::vector<std::string> names;
  const fb::Model &m = model.artifact().model();
  for (uint32_t k : *dm.forward().kernels())
    if (dm.writesBf16Addend(k))
      names.push_back(m.weights()
                          ->Get(m.kernels()->Get(k)->weights()->Get(0))
                          ->name()
                          ->str());
  return names;
}

} // namespace

TEST(Bf16Addends, ProductsInBf16GiveTheSameLogits) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  QuantizingCpuDevice plain, narrowing;
  narrowing.writesBf16Addends = true;
  std::unique_ptr<DeviceModel> onPlain, onNarrowing;
  setenv("MELT_BF16_ADDENDS", "1", 1);
  Status made = DeviceModel::create(*model, plain, onPlain);
  if (!made)
    made = DeviceModel::create(*model, narrowing, onNarrowing);
  unsetenv("MELT_BF16_ADDENDS");
  ASSERT_FALSE(made) << made.message();
  EXPECT_TRUE(addendWeights(*model, *onPlain).empty());
  const std::vector<std::string> names = addendWeights(*model, *onNarrowing);
  ASSERT_FALSE(names.empty());
  for (const std::string &name : names)
    EXPECT_TRUE(name.find("o_proj") != std::string::npos ||
                name.find("mlp.down_proj") != std::string::npos)
        << name << " is no residual addend";
  std::vector<float> want = stepLogits(*onPlain),
                     have = stepLogits(*onNarrowing);
  EXPECT_GT(narrowing.bf16Products, 0);
  EXPECT_GE(narrowing.bf16Addends, narrowing.bf16Products);
  expectSameLogits(have, want);
}

// Off unless asked for (its whole-model GPU runs are still to be made).
TEST(Bf16Addends, OffByDefault) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  unsetenv("MELT_BF16_ADDENDS");
  QuantizingCpuDevice narrowing;
  narrowing.writesBf16Addends = true;
  std::unique_ptr<DeviceModel> dm;
  Status s = DeviceModel::create(*model, narrowing, dm);
  ASSERT_FALSE(s) << s.message();
  EXPECT_TRUE(addendWeights(*model, *dm).empty());
}
