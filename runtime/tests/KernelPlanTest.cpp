// What melt-compile --target=cuda decides (melt-select-kernels) reaches the
// device: DeviceModel hands each planned kernel's choice to
// Device::planKernel with the weight it multiplies, and every weight
// arrives at importWeight with its device format. Watched on a CPU device
// that records them (the CPU itself ignores them); the CUDA device follows
// them. Needs MELT_TEST_CUDA_ARTIFACT (v3-tiny compiled with
// --precision=bf16 --target=cuda) and MELT_TEST_CUDA_CHECKPOINT.
#include "CpuDevice.h"
#include "Executor.h"
#include "Model.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <set>

using namespace melt::rt;

namespace {

class RecordingDevice final : public CpuDevice {
public:
  Status importWeight(const WeightData &weight, DeviceTensor &out) override {
    ++formats[weight.deviceFormat];
    return CpuDevice::importWeight(weight, out);
  }
  void planKernel(const DeviceTensor &weight, const KernelPlan &plan) override {
    EXPECT_NE(weight.data, nullptr);
    plans.push_back(plan);
  }
  std::map<WeightData::DeviceFormat, int> formats;
  std::vector<KernelPlan> plans;
};

/// v3-tiny compiled --target=cuda (MELT_TEST_CUDA_ARTIFACT and
/// MELT_TEST_CUDA_CHECKPOINT; the test is skipped without them), loaded
/// for a device other than the CPU's own.
void loadCudaArtifact(std::unique_ptr<Model> &model) {
  const char *artifact = std::getenv("MELT_TEST_CUDA_ARTIFACT");
  const char *checkpoint = std::getenv("MELT_TEST_CUDA_CHECKPOINT");
  if (!artifact || !checkpoint)
    GTEST_SKIP() << "MELT_TEST_CUDA_ARTIFACT / MELT_TEST_CUDA_CHECKPOINT "
                    "not set";
  Status s = Model::load(artifact, checkpoint, model, /*keepHostData=*/true);
  ASSERT_FALSE(s) << s.message();
}

/// The latent cache each MLA of @forward reads, in order.
std::vector<uint32_t> mlaCaches(const Model &model) {
  const fb::Model &m = model.artifact().model();
  std::vector<uint32_t> caches;
  if (const fb::Function *forward = model.artifact().function("forward"))
    for (uint32_t k : *forward->kernels()) {
      const fb::Kernel &kernel = *m.kernels()->Get(k);
      if (kernel.kind() == fb::KernelKind::MLA)
        caches.push_back(kernel.inputs()->Get(2));
    }
  return caches;
}

} // namespace

TEST(KernelPlans, CompiledChoicesReachTheDevice) {
  std::unique_ptr<Model> model;
  loadCudaArtifact(model);
  if (!model)
    return; // skipped or failed
  EXPECT_EQ(model->artifact().target(), "cuda");

  RecordingDevice device;
  std::unique_ptr<DeviceModel> onDevice;
  Status s = DeviceModel::create(*model, device, onDevice);
  ASSERT_FALSE(s) << s.message();

  // Every kernel of @forward that the pass plans, planned once.
  const fb::Model &m = model->artifact().model();
  int products = 0, experts = 0, mla = 0;
  for (uint32_t k : *onDevice->forward().kernels())
    switch (m.kernels()->Get(k)->kind()) {
    case fb::KernelKind::Linear:
    case fb::KernelKind::Logits:
      ++products;
      break;
    case fb::KernelKind::MoEExperts:
      ++experts;
      break;
    case fb::KernelKind::MLA:
      ++mla;
      break;
    default:
      break;
    }
  ASSERT_GT(products, 0);
  ASSERT_GT(experts, 0);
  ASSERT_GT(mla, 0);
  int smallM = 0, split = 0;
  for (const Device::KernelPlan &plan : device.plans) {
    // The tiny model's weights are small: 8 rows stream through the
    // small-M kernel; its experts (sizes in 32s, BF16) and MLA take the
    // tensor-core and split kernels.
    if (plan.smallMRows >= 0) {
      EXPECT_EQ(plan.smallMRows, 8);
      ++smallM;
    } else {
      EXPECT_EQ(plan.variant, 1);
      ++split;
    }
  }
  EXPECT_EQ(smallM, products);
  EXPECT_EQ(split, experts + mla);

  // BF16 GEMM operands, F32 for what other kernels read; none left to
  // the device.
  EXPECT_GT(device.formats[WeightData::DeviceFormat::BF16], 0);
  EXPECT_GT(device.formats[WeightData::DeviceFormat::F32], 0);
  EXPECT_EQ(device.formats[WeightData::DeviceFormat::Unset], 0);
}

namespace {

/// A CPU device that asks for BF16 latent caches for every MLA after the
/// first `f32Mlas` it is asked about (as the CUDA device does for those
/// planned on tensor cores), whatever the compiler chose (recorded).
class Bf16CacheDevice final : public CpuDevice {
public:
  explicit Bf16CacheDevice(int f32Mlas) : f32Mlas(f32Mlas) {}
  DType latentCacheType(const DeviceTensor &wUk,
                        DType compiled) const override {
    EXPECT_EQ(wUk.shape.size(), 3u);
    compiledTypes.insert(compiled);
    return asked++ < f32Mlas ? DType::F32 : DType::BF16;
  }
  const int f32Mlas;
  mutable int asked = 0;
  mutable std::set<DType> compiledTypes;
};

} // namespace

// DeviceModel gives each cache buffer of @forward the element type the
// device asks for the MLA over it (the append before it, which names the
// same buffer, is no other reader); a buffer whose MLA the device keeps in
// F32 stays F32.
TEST(KernelPlans, LatentCachesTakeTheTypeTheirMlaAsks) {
  std::unique_ptr<Model> model;
  loadCudaArtifact(model);
  if (!model)
    return; // skipped or failed
  const std::vector<uint32_t> mlas = mlaCaches(*model);
  ASSERT_GE(mlas.size(), 2u);
  // First every MLA in F32, then all but the first in BF16.
  for (bool someBf16 : {false, true}) {
    Bf16CacheDevice device(someBf16 ? 1 : 1 << 30);
    std::unique_ptr<DeviceModel> onDevice;
    ASSERT_FALSE(DeviceModel::create(*model, device, onDevice));
    EXPECT_EQ(device.asked, int(mlas.size())); // once per MLA
    // The bf16 policy's caches, as melt-assign-precision typed them.
    EXPECT_EQ(device.compiledTypes, std::set<DType>{DType::BF16});
    for (size_t i = 0; i < mlas.size(); ++i)
      EXPECT_EQ(onDevice->cacheType(mlas[i]),
                someBf16 && i > 0 ? DType::BF16 : DType::F32)
          << "MLA " << i << (someBf16 ? ", BF16 asked" : "");
  }
}

// The CPU device, the reference, keeps every latent cache in F32 whatever
// the compiler chose (the bf16 policy's attention: BF16), unless
// MELT_CPU_BF16_LATENT_CACHE=1.
TEST(KernelPlans, CpuKeepsLatentCachesInF32UnlessAsked) {
  std::unique_ptr<Model> bf16Model;
  loadCudaArtifact(bf16Model);
  if (!bf16Model)
    return; // skipped or failed
  auto cacheTypes = [](const Model &model) {
    CpuDevice device;
    std::unique_ptr<DeviceModel> onDevice;
    std::set<DType> types;
    EXPECT_FALSE(DeviceModel::create(model, device, onDevice));
    for (uint32_t cache : mlaCaches(model))
      types.insert(onDevice->cacheType(cache));
    return types;
  };
  ::unsetenv("MELT_CPU_BF16_LATENT_CACHE");
  EXPECT_EQ(cacheTypes(*bf16Model), std::set<DType>{DType::F32});
  ::setenv("MELT_CPU_BF16_LATENT_CACHE", "1", 1);
  EXPECT_EQ(cacheTypes(*bf16Model), std::set<DType>{DType::BF16});
  ::unsetenv("MELT_CPU_BF16_LATENT_CACHE");
}
