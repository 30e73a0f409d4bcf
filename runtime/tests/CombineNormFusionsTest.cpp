// A MoE layer's output left to the add and norm that read it next
// (CombineNormFusions.h, Device::leaveCombineToNorm): on a CPU device that,
// asked to leave it, keeps the experts' output aside and leaves NaNs where
// the executor's value is (so that a reader the executor missed would show
// in the logits), the add-and-norm calls take it, one for every output
// left, and the logits are bit for bit the same device's that was never
// asked. The executor asks for each MoE layer's output of the decode steps'
// shared-expert calls (QuantizingCpuDevice takes one token's shared expert
// into the experts' call). Needs MELT_TEST_FP8_POLICY_ARTIFACT (v3-tiny
// compiled with --precision=deepseek-v3) and
// MELT_TEST_FP8_POLICY_CHECKPOINT.
#include "Executor.h"
#include "Fp8PolicySessions.h"
#include "Model.h"
#include "QuantizingCpuDevice.h"

#include <gtest/gtest.h>

#include <limits>
#include <memory>
#include <vector>

using namespace melt::rt;

namespace {

class CombineLeavingCpuDevice : public QuantizingCpuDevice {
public:
  CombineLeavingCpuDevice() : QuantizingCpuDevice(true, true, true) {}
  ~CombineLeavingCpuDevice() override { release(held_); }

  void leaveCombineToNorm(bool leave) override {
    leave_ = leave;
    asked += leave;
  }
  Status moeExperts(const DeviceTensor &x, const DeviceTensor &indices,
                    const DeviceTensor &weights, const DeviceTensor &gate,
                    const DeviceTensor &up, const DeviceTensor &down,
                    bool combineBf16, DeviceTensor &y) override {
    return leaving(y, [&] {
      return QuantizingCpuDevice::moeExperts(x, indices, weights, gate, up,
                                             down, combineBf16, y);
    });
  }
  Status moeExpertsWithShared(const DeviceTensor &x,
                              const DeviceTensor &indices,
                              const DeviceTensor &weights,
                              const DeviceTensor &gate, const DeviceTensor &up,
                              const DeviceTensor &down, bool combineBf16,
                              bool quantizedX, const SharedExpert &shared,
                              DeviceTensor &y) override {
    return leaving(y, [&] {
      return QuantizingCpuDevice::moeExpertsWithShared(
          x, indices, weights, gate, up, down, combineBf16, quantizedX, shared,
          y);
    });
  }
  Status addRmsNorm(const DeviceTensor &a, const DeviceTensor &b,
                    const DeviceTensor &gamma, float eps, DeviceTensor &sum,
                    DeviceTensor &y) override {
    return taking(a, b, [&](const DeviceTensor &x, const DeviceTensor &z) {
      return QuantizingCpuDevice::addRmsNorm(x, z, gamma, eps, sum, y);
    });
  }
  Status addRmsNormForProducts(const DeviceTensor &a, const DeviceTensor &b,
                               const DeviceTensor &gamma, float eps,
                               DeviceTensor &sum, DeviceTensor &y,
                               const DeviceTensor &weight,
                               PreparedInput &prepared,
                               bool rowsRead) override {
    return taking(a, b, [&](const DeviceTensor &x, const DeviceTensor &z) {
      return QuantizingCpuDevice::addRmsNormForProducts(
          x, z, gamma, eps, sum, y, weight, prepared, rowsRead);
    });
  }
  Status addRmsNormForExperts(const DeviceTensor &a, const DeviceTensor &b,
                              const DeviceTensor &gamma, float eps,
                              DeviceTensor &sum, DeviceTensor &y,
                              const DeviceTensor &gate, PreparedInput &prepared,
                              bool rowsRead) override {
    return taking(a, b, [&](const DeviceTensor &x, const DeviceTensor &z) {
      return QuantizingCpuDevice::addRmsNormForExperts(
          x, z, gamma, eps, sum, y, gate, prepared, rowsRead);
    });
  }

  int asked = 0, left = 0, taken = 0;

private:
  /// The experts' call; asked to leave its output, the output kept aside
  /// and NaNs left in y.
  template <class Call> Status leaving(DeviceTensor &y, Call call) {
    const bool leave = leave_;
    leave_ = false; // (the calls a shared-expert call makes leave nothing)
    MELT_RETURN_IF_ERROR(call());
    if (!leave)
      return Status::ok();
    release(held_);
    MELT_RETURN_IF_ERROR(allocate(y.dtype, y.shape, held_));
    MELT_RETURN_IF_ERROR(copy(y, held_));
    std::vector<float> nan(size_t(y.numel()),
                           std::numeric_limits<float>::quiet_NaN());
    MELT_RETURN_IF_ERROR(upload(nan.data(), y));
    leftIn_ = y.data;
    ++left;
    return Status::ok();
  }
  /// An add-and-norm call, with what was kept aside in place of the output
  /// it was left for.
  template <class Call>
  Status taking(const DeviceTensor &a, const DeviceTensor &b, Call call) {
    if (!leftIn_ || (a.data != leftIn_ && b.data != leftIn_))
      return call(a, b);
    const bool inB = b.data == leftIn_;
    leftIn_ = nullptr;
    ++taken;
    Status s = inB ? call(a, held_) : call(held_, b);
    release(held_);
    return s;
  }
  bool leave_ = false;
  const void *leftIn_ = nullptr;
  DeviceTensor held_;
};

} // namespace

TEST(CombineNormFusions, OutputsLeftToTheNextNormGiveTheSameLogits) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  QuantizingCpuDevice plain(true, true, true);
  CombineLeavingCpuDevice leaving;
  std::unique_ptr<DeviceModel> onPlain, onLeaving;
  ASSERT_FALSE(DeviceModel::create(*model, plain, onPlain));
  ASSERT_FALSE(DeviceModel::create(*model, leaving, onLeaving));
  // Each MoE layer's output (its routed and shared experts' add) is found.
  size_t moeLayers = 0, found = 0;
  const fb::Model &m = onLeaving->model().artifact().model();
  for (uint32_t k : *onLeaving->forward().kernels()) {
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    moeLayers += kernel.kind() == fb::KernelKind::MoEExperts;
    if (kernel.outputs())
      for (uint32_t value : *kernel.outputs())
        found += onLeaving->combinesInNorm(value);
  }
  ASSERT_GT(moeLayers, 0u);
  EXPECT_EQ(found, moeLayers);
  const std::vector<float> want = stepLogits(*onPlain),
                           have = stepLogits(*onLeaving);
  // Asked at every decode step's MoE layers (their shared-expert calls),
  // and every output left was taken by the norm after it.
  EXPECT_GT(leaving.asked, 0);
  EXPECT_EQ(leaving.left, leaving.asked);
  EXPECT_EQ(leaving.taken, leaving.left);
  expectSameLogits(have, want);
}
