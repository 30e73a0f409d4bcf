// A Split's parts left in place (DeviceModel::leavesPartInPlace): on the
// CPU device, which takes a row pitch, the executor finds the joint q/kv
// down projection's query and latent parts of each MLA layer, a prefill's
// norm reads the query part where the projection wrote it (not the last
// layer's, which runs on the logit rows alone) and the latent split copies
// from it, and the logits are bit for bit those of the parts
// copied out (MELT_SPLIT_PARTS_IN_PLACE=0); a one-token step's parts stay
// contiguous views. Needs MELT_TEST_FP8_POLICY_ARTIFACT and
// MELT_TEST_FP8_POLICY_CHECKPOINT (the golden v3-tiny, compiled with
// --precision=deepseek-v3). The CPU device's norm and slice of a pitched
// tensor are checked against packed copies directly.
#include "CpuDevice.h"
#include "Executor.h"
#include "Fp8PolicySessions.h"
#include "Model.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

using namespace melt::rt;

namespace {

/// Counts the calls that read a tensor with a row pitch.
class PitchCountingCpuDevice : public CpuDevice {
public:
  Status rmsNorm(const DeviceTensor &x, const DeviceTensor &gamma, float eps,
                 DeviceTensor &y) override {
    pitchedNorms += x.rowPitch != 0;
    return CpuDevice::rmsNorm(x, gamma, eps, y);
  }
  Status slice(const DeviceTensor &x, int axis, int64_t offset,
               DeviceTensor &y) override {
    pitchedSlices += x.rowPitch != 0;
    return CpuDevice::slice(x, axis, offset, y);
  }
  int pitchedNorms = 0, pitchedSlices = 0;
};

DeviceTensor floatTensor(std::vector<float> &values,
                         std::vector<int64_t> shape) {
  DeviceTensor t;
  t.data = values.data();
  t.dtype = DType::F32;
  t.shape = std::move(shape);
  return t;
}

} // namespace

TEST(SplitPartsInPlace, GiveTheCopiedPartsLogits) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  PitchCountingCpuDevice inPlace, copied;
  std::unique_ptr<DeviceModel> onInPlace, onCopied;
  ASSERT_FALSE(DeviceModel::create(*model, inPlace, onInPlace));
  Status s = createWithSwitchOff(*model, copied, "MELT_SPLIT_PARTS_IN_PLACE",
                                 onCopied);
  ASSERT_FALSE(s) << s.message();
  ASSERT_GT(mlaLayers(*onInPlace), 0u);
  // Each layer's latent part (its split), and each layer's query part
  // (its norm) but the last's, whose norm runs on the logit rows alone.
  EXPECT_EQ(onInPlace->partsLeftInPlace(), 2 * mlaLayers(*onInPlace) - 1);
  EXPECT_EQ(onCopied->partsLeftInPlace(), 0u);
  const std::vector<float> want = stepLogits(*onCopied),
                           have = stepLogits(*onInPlace);
  EXPECT_GT(inPlace.pitchedNorms, 0);
  EXPECT_GT(inPlace.pitchedSlices, 0);
  EXPECT_EQ(copied.pitchedNorms + copied.pitchedSlices, 0);
  expectSameLogits(have, want);
}

TEST(SplitPartsInPlace, CpuNormAndSliceReadThePitch) {
  // A [3, 10] matrix; its columns [2, 7) as a [3, 5] part, rows 10 apart.
  std::vector<float> whole(30), packed(15), gamma(5, 1.5f);
  for (size_t i = 0; i < whole.size(); ++i)
    whole[i] = float(i % 7) - 2.5f + 0.25f * float(i / 10);
  for (int r = 0; r < 3; ++r)
    std::memcpy(&packed[size_t(r) * 5], &whole[size_t(r) * 10 + 2],
                5 * sizeof(float));
  DeviceTensor part = floatTensor(whole, {3, 5}), plain;
  part.data = whole.data() + 2;
  part.rowPitch = 10;
  plain = floatTensor(packed, {3, 5});
  DeviceTensor g = floatTensor(gamma, {5});
  CpuDevice cpu;
  std::vector<float> fromPart(15), fromPlain(15);
  DeviceTensor y1 = floatTensor(fromPart, {3, 5}),
               y2 = floatTensor(fromPlain, {3, 5});
  ASSERT_FALSE(cpu.rmsNorm(part, g, 1e-6f, y1));
  ASSERT_FALSE(cpu.rmsNorm(plain, g, 1e-6f, y2));
  EXPECT_EQ(fromPart, fromPlain);
  // Columns [1, 4) of the part, and of its packed copy.
  std::vector<float> cut1(9), cut2(9);
  DeviceTensor c1 = floatTensor(cut1, {3, 3}), c2 = floatTensor(cut2, {3, 3});
  ASSERT_FALSE(cpu.slice(part, 1, 1, c1));
  ASSERT_FALSE(cpu.slice(plain, 1, 1, c2));
  EXPECT_EQ(cut1, cut2);
  // Cut along its rows, a part left in place is refused, not misread.
  std::vector<float> rowsCut(5);
  DeviceTensor r = floatTensor(rowsCut, {1, 5});
  EXPECT_TRUE(cpu.slice(part, 0, 1, r));
}
