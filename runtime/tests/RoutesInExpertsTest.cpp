// A router's choices made by its experts' call (RoutesInExperts.h): the
// executor finds every MoE layer's router whose choices its experts alone
// read and routes them through Device::routeInExperts; on a CPU device that
// leaves each such route to the experts call (as the CUDA device's one-token
// kernels do) the logits are bit for bit those of the plain CPU device, and
// every route left is taken by the experts call that reads it. Needs
// MELT_TEST_FP8_POLICY_ARTIFACT (v3-tiny compiled with
// --precision=deepseek-v3) and MELT_TEST_FP8_POLICY_CHECKPOINT.
#include "CpuDevice.h"
#include "Executor.h"
#include "Fp8PolicySessions.h"
#include "Model.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <optional>
#include <vector>

using namespace melt::rt;

namespace {

/// A CPU device that routes in the experts call reading the choices.
class RoutingInExpertsCpuDevice : public CpuDevice {
public:
  int left = 0, taken = 0;

  Status routeInExperts(const DeviceTensor &logits, const DeviceTensor *bias,
                        const RouterParams &params, DeviceTensor &indices,
                        DeviceTensor &weights) override {
    EXPECT_FALSE(pending_) << "a route left and not taken";
    pending_ = Pending{logits, bias, params, indices, weights};
    ++left;
    return Status::ok();
  }
  Status moeExperts(const DeviceTensor &x, const DeviceTensor &indices,
                    const DeviceTensor &weights, const DeviceTensor &gate,
                    const DeviceTensor &up, const DeviceTensor &down,
                    bool combineBf16, DeviceTensor &y) override {
    MELT_RETURN_IF_ERROR(routeFor(indices));
    return CpuDevice::moeExperts(x, indices, weights, gate, up, down,
                                 combineBf16, y);
  }
  Status moeExpertsOfQuantized(const DeviceTensor &x,
                               const DeviceTensor &indices,
                               const DeviceTensor &weights,
                               const DeviceTensor &gate, const DeviceTensor &up,
                               const DeviceTensor &down, bool combineBf16,
                               DeviceTensor &y) override {
    MELT_RETURN_IF_ERROR(routeFor(indices));
    return CpuDevice::moeExpertsOfQuantized(x, indices, weights, gate, up,
                                            down, combineBf16, y);
  }
  Status moeExpertsWithShared(const DeviceTensor &x,
                              const DeviceTensor &indices,
                              const DeviceTensor &weights,
                              const DeviceTensor &gate, const DeviceTensor &up,
                              const DeviceTensor &down, bool combineBf16,
                              bool quantizedX, const SharedExpert &shared,
                              DeviceTensor &y) override {
    MELT_RETURN_IF_ERROR(routeFor(indices));
    return CpuDevice::moeExpertsWithShared(x, indices, weights, gate, up, down,
                                           combineBf16, quantizedX, shared, y);
  }

private:
  struct Pending {
    DeviceTensor logits;
    const DeviceTensor *bias;
    RouterParams params;
    DeviceTensor indices, weights;
  };
  /// The route left for `indices`, made now (the logits still hold the
  /// router's scores: the executor keeps them to the step's end).
  Status routeFor(const DeviceTensor &indices) {
    if (!pending_ || pending_->indices.data != indices.data)
      return Status::ok();
    Pending p = *pending_;
    pending_.reset();
    ++taken;
    return routeExperts(p.logits, p.bias, p.params, p.indices, p.weights);
  }
  std::optional<Pending> pending_;
};

size_t moeRouters(const DeviceModel &dm) {
  size_t n = 0;
  for (uint32_t k : *dm.forward().kernels())
    n += dm.model().artifact().model().kernels()->Get(k)->kind() ==
         fb::KernelKind::MoERouter;
  return n;
}

} // namespace

TEST(RoutesInExperts, RoutesLeftToTheExpertsGiveTheSameLogits) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  CpuDevice plain;
  RoutingInExpertsCpuDevice routing;
  std::unique_ptr<DeviceModel> onPlain, onRouting;
  ASSERT_FALSE(DeviceModel::create(*model, plain, onPlain));
  ASSERT_FALSE(DeviceModel::create(*model, routing, onRouting));
  // Every MoE layer's router (v3-tiny's two).
  ASSERT_GT(moeRouters(*onRouting), 0u);
  EXPECT_EQ(onRouting->routesInExpertsCount(), moeRouters(*onRouting));
  const std::vector<float> want = stepLogits(*onPlain),
                           have = stepLogits(*onRouting);
  expectSameLogits(have, want);
  EXPECT_GT(routing.left, 0);
  EXPECT_EQ(routing.taken, routing.left);
}

TEST(RoutesInExperts, CanBeTurnedOff) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  setenv("MELT_ROUTE_IN_EXPERTS", "0", 1);
  RoutingInExpertsCpuDevice routing;
  std::unique_ptr<DeviceModel> dm;
  Status s = DeviceModel::create(*model, routing, dm);
  unsetenv("MELT_ROUTE_IN_EXPERTS");
  ASSERT_FALSE(s) << s.message();
  EXPECT_EQ(dm->routesInExpertsCount(), 0u);
  std::vector<float> logits = stepLogits(*dm);
  EXPECT_FALSE(logits.empty());
  EXPECT_EQ(routing.left, 0);
}
