// Products kept in BF16 (Bf16Products.h): on a CPU device that multiplies
// the FP8-stored weights as the CUDA device does and, asked to, writes
// those products in BF16 and reads BF16 activations in its adds, norms,
// ropes, slices and SiLU-muls (what the CUDA device does past its
// few-token kernel), the logits are bit for bit the plain CPU device's
// (which widens nothing: it rounds the F32 products to BF16 values). By
// default (none with MELT_BF16_PRODUCTS=0): the attention's output and
// joint q/kv down projections and the dense MLP's gate, up (its SiLU-mul
// reads them, apart or in the down product) and down projections are such
// products; the query's up projection (the MLA reads it) is not. Needs
// MELT_TEST_FP8_POLICY_ARTIFACT (v3-tiny compiled with
// --precision=deepseek-v3) and MELT_TEST_FP8_POLICY_CHECKPOINT.
#include "CpuDevice.h"
#include "Executor.h"
#include "Fp8PolicySessions.h"
#include "Model.h"
#include "QuantizingCpuDevice.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <vector>

using namespace melt::rt;

namespace {

/// The names of the weights the BF16 products multiply, without their
/// layer ("self_attn.o_proj").
std::set<std::string> productWeights(const Model &model,
                                     const DeviceModel &dm) {
  std::set<std::string> names;
  const fb::Model &m = model.artifact().model();
  for (uint32_t k : *dm.forward().kernels())
    if (dm.writesBf16Product(k)) {
      std::string name = m.weights()
                             ->Get(m.kernels()->Get(k)->weights()->Get(0))
                             ->name()
                             ->str();
      // model.layers.N.rest -> rest
      size_t dot = name.find('.', name.find("layers.") + 7);
      names.insert(dot == std::string::npos ? name : name.substr(dot + 1));
    }
  return names;
}

} // namespace

TEST(Bf16Products, ProductsInBf16GiveTheSameLogits) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  // The MLP's SiLU-mul a kernel of its own, then taken into the down
  // product (linearOfSiluMul): either way it reads BF16 gate and up.
  for (bool fusesSiluMul : {false, true}) {
    SCOPED_TRACE(fusesSiluMul ? "SiLU-mul in the product" : "SiLU-mul apart");
    QuantizingCpuDevice plain(fusesSiluMul), narrowing(fusesSiluMul);
    narrowing.writesBf16Products = true;
    std::unique_ptr<DeviceModel> onPlain, onNarrowing;
    Status made = DeviceModel::create(*model, plain, onPlain);
    if (!made)
      made = DeviceModel::create(*model, narrowing, onNarrowing);
    ASSERT_FALSE(made) << made.message();
    EXPECT_TRUE(productWeights(*model, *onPlain).empty());
    EXPECT_EQ(productWeights(*model, *onNarrowing),
              (std::set<std::string>{"self_attn.o_proj", "self_attn.qkv_a_proj",
                                     "mlp.gate_proj", "mlp.up_proj",
                                     "mlp.down_proj"}));
    std::vector<float> want = stepLogits(*onPlain),
                       have = stepLogits(*onNarrowing);
    EXPECT_GT(narrowing.bf16Products, 0);
    EXPECT_GT(narrowing.bf16Reads, narrowing.bf16Products);
    if (fusesSiluMul)
      EXPECT_GT(narrowing.fusedProducts, 0);
    expectSameLogits(have, want);
  }
}

// Where the device's mlaOfQuery reads a BF16 query projection (the CUDA
// device with MELT_CUDA_PREFILL_MLA_QUERY=1), q_b_proj is such a product
// too: the MLA's call takes it, the logits the same bits.
TEST(Bf16Products, QueryProjectionInBf16WhereTheMlaReadsIt) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  QuantizingCpuDevice plain, narrowing;
  narrowing.writesBf16Products = narrowing.takesMlaQueryInBf16 = true;
  std::unique_ptr<DeviceModel> onPlain, onNarrowing;
  Status made = DeviceModel::create(*model, plain, onPlain);
  if (!made)
    made = DeviceModel::create(*model, narrowing, onNarrowing);
  ASSERT_FALSE(made) << made.message();
  EXPECT_GT(onNarrowing->mlaQueryFusions(), 0u);
  EXPECT_EQ(productWeights(*model, *onNarrowing),
            (std::set<std::string>{"self_attn.o_proj", "self_attn.qkv_a_proj",
                                   "self_attn.q_b_proj", "mlp.gate_proj",
                                   "mlp.up_proj", "mlp.down_proj"}));
  std::vector<float> want = stepLogits(*onPlain),
                     have = stepLogits(*onNarrowing);
  EXPECT_GT(narrowing.bf16Queries, 0);
  expectSameLogits(have, want);
}

// On by default (run on the H200 in session 24); MELT_BF16_PRODUCTS=0 finds
// none.
TEST(Bf16Products, OnByDefaultAndOffWhereAsked) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  QuantizingCpuDevice narrowing;
  narrowing.writesBf16Products = true;
  unsetenv("MELT_BF16_PRODUCTS");
  std::unique_ptr<DeviceModel> byDefault, off;
  Status s = DeviceModel::create(*model, narrowing, byDefault);
  ASSERT_FALSE(s) << s.message();
  EXPECT_FALSE(productWeights(*model, *byDefault).empty());
  setenv("MELT_BF16_PRODUCTS", "0", 1);
  s = DeviceModel::create(*model, narrowing, off);
  unsetenv("MELT_BF16_PRODUCTS");
  ASSERT_FALSE(s) << s.message();
  EXPECT_TRUE(productWeights(*model, *off).empty());
}

// The bf16 policy's linears (BF16 weights, a BF16 output the runtime may
// keep in F32: the artifact's 2): kept in F32 where the device writes
// them so only for FP8 weights; on a device that writes BF16 weights'
// products in BF16 too, the same products as the FP8 policy's, the logits
// moved only by their rounding. Needs MELT_TEST_CUDA_ARTIFACT (v3-tiny
// compiled --precision=bf16 --target=cuda) and MELT_TEST_CUDA_CHECKPOINT.
TEST(Bf16Products, Bf16PolicyProductsInBf16WhereTheDeviceWritesThem) {
  std::unique_ptr<Model> model = loadModelFromEnvironment(
      "MELT_TEST_CUDA_ARTIFACT", "MELT_TEST_CUDA_CHECKPOINT");
  if (!model)
    GTEST_SKIP() << "MELT_TEST_CUDA_ARTIFACT / MELT_TEST_CUDA_CHECKPOINT "
                    "not set";
  const fb::Model &m = model->artifact().model();
  int mayKeepF32 = 0;
  for (uint32_t k : forwardKernelsOf(*model, fb::KernelKind::Linear)) {
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    EXPECT_FALSE(roundsLinearOutput(kernel)) << "kernels[" << k << "]";
    mayKeepF32 += linearOutputOf(kernel) == LinearOutput::Bf16MayKeepF32;
  }
  EXPECT_GT(mayKeepF32, 0);
  QuantizingCpuDevice plain, fp8Only, narrowing;
  fp8Only.writesBf16Products = true;
  narrowing.writesBf16WeightProducts = true;
  std::unique_ptr<DeviceModel> onPlain, onFp8Only, onNarrowing;
  Status made = DeviceModel::create(*model, plain, onPlain);
  if (!made)
    made = DeviceModel::create(*model, fp8Only, onFp8Only);
  if (!made)
    made = DeviceModel::create(*model, narrowing, onNarrowing);
  ASSERT_FALSE(made) << made.message();
  EXPECT_TRUE(productWeights(*model, *onFp8Only).empty());
  EXPECT_EQ(
      productWeights(*model, *onNarrowing),
      (std::set<std::string>{"self_attn.o_proj", "self_attn.qkv_a_proj",
                             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}));
  std::vector<float> want = stepLogits(*onPlain),
                     have = stepLogits(*onNarrowing);
  EXPECT_GT(narrowing.bf16Products, 0);
  ASSERT_EQ(have.size(), want.size());
  ASSERT_FALSE(want.empty());
  float lo = want[0], hi = want[0], worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    lo = std::min(lo, want[i]), hi = std::max(hi, want[i]);
    worst = std::max(worst, std::fabs(have[i] - want[i]));
  }
  // BF16 products' rounding (2^-9 of each value) through a tiny model.
  EXPECT_GT(worst, 0.f);
  EXPECT_LE(worst, 0.02f * (hi - lo));
}
