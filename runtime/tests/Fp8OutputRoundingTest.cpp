// An FP8 product's BF16 output (the precision melt-assign-precision gives
// every FP8 melt.linear: output = bf16): melt-compile marks those Linear
// kernels in the artifact, and the executor rounds their results to BF16
// on a device whose product keeps more (the CPU's F32 GEMM), not on one
// whose FP8 GEMM wrote BF16 already. The routed experts' outputs alike
// (their precision's output, BF16): each expert's output is rounded before
// the weighted sum. Needs MELT_TEST_FP8_POLICY_ARTIFACT
// (v3-tiny compiled with --precision=deepseek-v3) and
// MELT_TEST_FP8_POLICY_CHECKPOINT.
#include "Artifact.h"
#include "CpuDevice.h"
#include "Executor.h"
#include "Fp8PolicySessions.h"
#include "Model.h"
#include "melt/artifact_header.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <vector>

using namespace melt::rt;

namespace {

/// Counts the roundings; where `fp8GemmOutputs`, says that its products of
/// FP8-stored weights write BF16 themselves (as a GPU's FP8 GEMM does).
class RoundingCountingDevice final : public CpuDevice {
public:
  explicit RoundingCountingDevice(bool fp8GemmOutputs)
      : fp8GemmOutputs_(fp8GemmOutputs) {}
  Status importWeight(const WeightData &weight, DeviceTensor &out) override {
    MELT_RETURN_IF_ERROR(CpuDevice::importWeight(weight, out));
    if (weight.storage == WeightData::Storage::FP8Blocks)
      fp8Stored_.insert(out.data);
    return Status::ok();
  }
  bool linearOutputsBf16(const DeviceTensor &weight) const override {
    return fp8GemmOutputs_ && fp8Stored_.count(weight.data) != 0;
  }
  Status roundToBf16(DeviceTensor &x) override {
    ++roundings;
    return CpuDevice::roundToBf16(x);
  }
  Status moeExperts(const DeviceTensor &x, const DeviceTensor &indices,
                    const DeviceTensor &weights, const DeviceTensor &gate,
                    const DeviceTensor &up, const DeviceTensor &down,
                    bool combineBf16, DeviceTensor &y) override {
    ++(combineBf16 ? expertsCombinedInBf16 : expertsCombinedInF32);
    return CpuDevice::moeExperts(x, indices, weights, gate, up, down,
                                 combineBf16, y);
  }
  int roundings = 0;
  int expertsCombinedInBf16 = 0, expertsCombinedInF32 = 0;

private:
  bool fp8GemmOutputs_;
  std::set<const void *> fp8Stored_;
};

} // namespace

TEST(Fp8Outputs, FP8ProductsAreMarkedBf16InTheArtifact) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  const fb::Model &m = model->artifact().model();
  int marked = 0;
  for (uint32_t k : forwardKernelsOf(*model, fb::KernelKind::Linear)) {
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    if (!roundsLinearOutput(kernel))
      continue;
    ++marked;
    // Only products of weights kept in FP8 blocks.
    EXPECT_EQ(model->weight(kernel.weights()->Get(0)).storage,
              WeightData::Storage::FP8Blocks)
        << "kernels[" << k << "]";
  }
  EXPECT_GT(marked, 0);
}

TEST(Fp8Outputs, RoundedWhereTheProductKeptMore) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  RoundingCountingDevice f32Gemms(false), fp8Gemms(true);
  std::unique_ptr<DeviceModel> onF32, onFp8;
  ASSERT_FALSE(DeviceModel::create(*model, f32Gemms, onF32));
  ASSERT_FALSE(DeviceModel::create(*model, fp8Gemms, onFp8));
  EXPECT_FALSE(stepLogits(*onF32).empty());
  EXPECT_FALSE(stepLogits(*onFp8).empty());
  EXPECT_GT(f32Gemms.roundings, 0);
  EXPECT_EQ(fp8Gemms.roundings, 0);
}

// The policy gives melt.moe_experts a BF16 output on one device too (no
// `combine` of several devices): every MoEExperts kernel is marked, and
// the device is asked for each expert's output in BF16 before the sum.
TEST(Fp8Outputs, RoutedExpertsCombineTheirOutputsInBf16) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  const fb::Model &m = model->artifact().model();
  const std::vector<uint32_t> experts =
      forwardKernelsOf(*model, fb::KernelKind::MoEExperts);
  for (uint32_t k : experts) {
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    ASSERT_TRUE(kernel.ints() && kernel.ints()->size() > 0)
        << "kernels[" << k << "]";
    EXPECT_EQ(kernel.ints()->Get(0), 1) << "kernels[" << k << "]";
  }
  EXPECT_FALSE(experts.empty());
  RoundingCountingDevice device(false);
  std::unique_ptr<DeviceModel> dm;
  ASSERT_FALSE(DeviceModel::create(*model, device, dm));
  EXPECT_FALSE(stepLogits(*dm).empty());
  EXPECT_GT(device.expertsCombinedInBf16, 0);
  EXPECT_EQ(device.expertsCombinedInF32, 0);
}

// A linear's output precision outside the three the runtime knows is a
// damaged artifact, named by its kernel (not taken for a rounding).
TEST(Fp8Outputs, UnknownLinearOutputIsRefused) {
  const char *path = std::getenv("MELT_TEST_FP8_POLICY_ARTIFACT");
  if (!path)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT not set";
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), size_t(melt::kArtifactHeaderSize));
  const melt::ArtifactHeader header = melt::decodeArtifactHeader(bytes.data());
  const fb::Model *m = fb::GetModel(bytes.data() + header.flatbufferOffset);
  int marked = -1;
  for (uint32_t k = 0; k < m->kernels()->size() && marked < 0; ++k) {
    const fb::Kernel &kernel = *m->kernels()->Get(k);
    if (kernel.kind() == fb::KernelKind::Linear && kernel.ints() &&
        kernel.ints()->size() > 0) {
      marked = int(k);
      // The value in place (little-endian int64), then the checksum again.
      auto *at = const_cast<uint8_t *>(
          reinterpret_cast<const uint8_t *>(kernel.ints()->data()));
      melt::storeLE(at, 7, 8);
    }
  }
  ASSERT_GE(marked, 0) << "no linear with an output precision";
  melt::ArtifactHeader resealed = header;
  resealed.checksum = melt::fnv1a64(bytes.data() + melt::kArtifactHeaderSize,
                                    bytes.size() - melt::kArtifactHeaderSize);
  melt::encodeArtifactHeader(resealed, bytes.data());
  Artifact artifact;
  Status s = Artifact::fromBytes(std::move(bytes), "damaged.melt", artifact);
  ASSERT_TRUE(s);
  EXPECT_NE(
      s.message().find("kernels[" + std::to_string(marked) + "].ints[0] is 7"),
      std::string::npos)
      << s.message();
}
