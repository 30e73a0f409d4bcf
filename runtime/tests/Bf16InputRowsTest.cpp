// The BF16 rows a device's kernels prepare for the BF16 products that read
// them (the CUDA device's MELT_CUDA_BF16_INPUT_ROWS), routed by the
// executor, checked without a GPU: on a CPU device whose BF16 products
// round their input to BF16 (Bf16RowsCpuDevice.h), norms and MLA calls that
// write those rows for them (their own rows NaNs where nothing else reads
// them) and MoE input norms that attach them for the router and a shared
// expert's products run apart give the logits of the same device rounding
// in each product, bit for bit. The model: v3-tiny in the bf16 policy
// (MELT_TEST_CUDA_ARTIFACT, compiled --precision=bf16 --target=cuda, and
// MELT_TEST_CUDA_CHECKPOINT): a dense layer, MoE layers with a shared
// expert.
#include "Bf16RowsCpuDevice.h"
#include "Executor.h"
#include "Fp8PolicySessions.h"
#include "Model.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

using namespace melt::rt;

TEST(Bf16InputRows, NormsPreparingBf16RowsGiveTheRoundingProductsLogits) {
  std::unique_ptr<Model> model = loadModelFromEnvironment(
      "MELT_TEST_CUDA_ARTIFACT", "MELT_TEST_CUDA_CHECKPOINT");
  if (!model)
    GTEST_SKIP() << "MELT_TEST_CUDA_ARTIFACT / MELT_TEST_CUDA_CHECKPOINT "
                    "not set";
  Bf16RowsCpuDevice rounding, preparing;
  preparing.preparesBf16Rows = true;
  std::unique_ptr<DeviceModel> onRounding, onPreparing;
  ASSERT_FALSE(DeviceModel::create(*model, rounding, onRounding));
  ASSERT_FALSE(DeviceModel::create(*model, preparing, onPreparing));
  uint32_t norms = 0;
  for (uint32_t k : *onPreparing->forward().kernels())
    norms += onPreparing->normProducts(k) != nullptr;
  EXPECT_GT(norms, 0u) << "no norm read by BF16 products alone";
  const std::vector<float> want = stepLogits(*onRounding),
                           have = stepLogits(*onPreparing);
  EXPECT_EQ(rounding.preparingNorms + rounding.expertNorms, 0);
  // The attention's input norms (alone and with the add) and the query's.
  EXPECT_GT(preparing.preparingNorms, 0);
  EXPECT_GT(preparing.unwrittenNorms, 0);
  // Every product of what a norm prepared multiplied it, and the shared
  // experts' gate and up the MoE norms' rows.
  EXPECT_GE(preparing.preparedProducts, preparing.preparingNorms);
  // (The routers' gates are F32 in the artifact: the CPU's routers read
  // the norms' F32 rows; a GPU keeps them in BF16 and reads what is
  // attached.)
  EXPECT_GT(preparing.expertNorms, 0);
  // The attentions' outputs, for their o_proj.
  EXPECT_GT(preparing.preparedMlaOutputs, 0);
  EXPECT_GT(preparing.unwrittenMlaOutputs, 0);
  EXPECT_GE(preparing.preparedProducts, preparing.preparingNorms +
                                            2 * preparing.expertNorms +
                                            preparing.preparedMlaOutputs);
  EXPECT_TRUE(preparing.nothingAttached());
  expectSameLogits(have, want);
}
