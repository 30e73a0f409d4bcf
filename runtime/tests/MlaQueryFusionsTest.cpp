// An MLA's query split and rope in its call (MlaQueryFusions.h): on a CPU
// device that takes them so (Device::mlaOfQuery's default: the slices, the
// rope, then mla, into memory of its own), the executor finds each layer's
// MLA, leaves out the split and the rope, and the logits are bit for bit
// the plain CPU device's; under ASan this also checks that the query
// projection lives until the MLA has read it. Needs
// MELT_TEST_FP8_POLICY_ARTIFACT and MELT_TEST_FP8_POLICY_CHECKPOINT (the
// golden v3-tiny, compiled with --precision=deepseek-v3).
#include "CpuDevice.h"
#include "Executor.h"
#include "Fp8PolicySessions.h"
#include "Model.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <vector>

using namespace melt::rt;

namespace {

class QueryTakingCpuDevice : public CpuDevice {
public:
  bool fusesMlaQuery() const override { return true; }
  Status mlaOfQuery(const DeviceTensor &q, int64_t nope,
                    const DeviceTensor &positions, const RopeParams &rope,
                    const DeviceTensor &cache, const CacheLayout &layout,
                    const DeviceTensor &wUk, const DeviceTensor &wUv,
                    float scale, int64_t decompressAbove,
                    DeviceTensor &out) override {
    ++calls;
    return CpuDevice::mlaOfQuery(q, nope, positions, rope, cache, layout, wUk,
                                 wUv, scale, decompressAbove, out);
  }
  int calls = 0;
};

} // namespace

TEST(MlaQueryFusions, QueriesInTheMlaCallGiveTheKernelsLogits) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  CpuDevice plain;
  QueryTakingCpuDevice taking;
  std::unique_ptr<DeviceModel> onPlain, onTaking;
  ASSERT_FALSE(DeviceModel::create(*model, plain, onPlain));
  ASSERT_FALSE(DeviceModel::create(*model, taking, onTaking));
  EXPECT_EQ(onPlain->mlaQueryFusions(), 0u);
  ASSERT_GT(mlaLayers(*onTaking), 0u);
  EXPECT_EQ(onTaking->mlaQueryFusions(), mlaLayers(*onTaking));
  std::vector<float> want = stepLogits(*onPlain), have = stepLogits(*onTaking);
  EXPECT_GT(taking.calls, 0);
  expectSameLogits(have, want);
}

TEST(MlaQueryFusions, CanBeTurnedOff) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  setenv("MELT_FUSE_MLA_QUERY", "0", 1);
  QueryTakingCpuDevice taking;
  std::unique_ptr<DeviceModel> dm;
  Status s = DeviceModel::create(*model, taking, dm);
  unsetenv("MELT_FUSE_MLA_QUERY");
  ASSERT_FALSE(s) << s.message();
  EXPECT_EQ(dm->mlaQueryFusions(), 0u);
  stepLogits(*dm);
  EXPECT_EQ(taking.calls, 0);
}
