// MLA's latent appends done with their norm and rope in one call
// (LatentAppends.h): on a CPU device that takes them in its own way and
// leaves the norm's and the rope's values as NaN (so that a reader the
// executor missed would show in the logits), every layer's append is
// found and the logits are bit for bit the plain CPU device's, whose
// appends run as the three kernels (MELT_FUSE_LATENT_APPEND=0). Needs
// MELT_TEST_FP8_POLICY_ARTIFACT and MELT_TEST_FP8_POLICY_CHECKPOINT (v3-tiny
// compiled with --precision=deepseek-v3: MLA on a latent cache).
#include "CpuDevice.h"
#include "Executor.h"
#include "Fp8PolicySessions.h"
#include "Model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <vector>

using namespace melt::rt;

namespace {

/// Norm and rope into tensors of its own, the append from those; the
/// executor's two values poisoned.
class AppendingCpuDevice : public CpuDevice {
public:
  Status appendLatent(const DeviceTensor &latent, const DeviceTensor &gamma,
                      float eps, const DeviceTensor &key,
                      const DeviceTensor &positions, const RopeParams &rope,
                      const CacheLayout &layout, DeviceTensor &normed,
                      DeviceTensor &rotated, DeviceTensor &cache) override {
    ++calls;
    DeviceTensor n, r;
    MELT_RETURN_IF_ERROR(allocate(DType::F32, latent.shape, n));
    MELT_RETURN_IF_ERROR(allocate(DType::F32, key.shape, r));
    Status s = rmsNorm(latent, gamma, eps, n);
    if (!s)
      s = this->rope(key, positions, rope, r);
    if (!s)
      s = cacheAppend(n, r, layout, cache);
    release(n);
    release(r);
    for (DeviceTensor *t : {&normed, &rotated}) {
      std::vector<float> nan(size_t(t->numel()),
                             std::numeric_limits<float>::quiet_NaN());
      MELT_RETURN_IF_ERROR(upload(nan.data(), *t));
    }
    return s;
  }
  int calls = 0;
};

} // namespace

TEST(LatentAppends, OneCallPerLayerMatchesTheThreeKernels) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  CpuDevice plain;
  AppendingCpuDevice appending;
  std::unique_ptr<DeviceModel> onPlain, onAppending;
  setenv("MELT_FUSE_LATENT_APPEND", "0", 1);
  Status s = DeviceModel::create(*model, plain, onPlain);
  unsetenv("MELT_FUSE_LATENT_APPEND");
  ASSERT_FALSE(s) << s.message();
  ASSERT_FALSE(DeviceModel::create(*model, appending, onAppending));
  uint32_t found = 0, plainFound = 0;
  for (uint32_t k : *onAppending->forward().kernels()) {
    found += onAppending->latentAppend(k) != nullptr;
    plainFound += onPlain->latentAppend(k) != nullptr;
  }
  EXPECT_EQ(plainFound, 0u);
  EXPECT_EQ(found, uint32_t(model->artifact().model().info()->num_layers()))
      << "one a layer";
  std::vector<float> want = stepLogits(*onPlain),
                     have = stepLogits(*onAppending);
  EXPECT_GT(appending.calls, 0);
  expectSameLogits(have, want);
}
