// Side branches (SideBranches.h): the shared experts, the MLA queries and
// the dense MLPs' up products of the golden deepseek-v3 model run as
// branches, and a device that
// runs a branch's calls only when it is joined (as late as the executor
// allows; a GPU runs them at any time in between) gives the logits of the
// one that runs every call in order, bit for bit. That device also checks
// that a branch call reads only memory made before the branch's mark or
// by the branch itself (what a second stream may read), the former among
// what the mark says the branch reads (a device holding a call back until
// a later one, the CUDA device's one-row norms, relies on that list), and that
// no other call happens inside a branch. Memory released stays reserved to the
// end (as a recorded graph's does), and new F32 memory is NaN, so that a reader
// of a branch value before the join would show in the logits. Needs
// MELT_TEST_FP8_POLICY_ARTIFACT and MELT_TEST_FP8_POLICY_CHECKPOINT (v3-tiny
// compiled with --precision=deepseek-v3).
#include "SideBranches.h"
#include "CpuDevice.h"
#include "Executor.h"
#include "Fp8PolicySessions.h"
#include "Model.h"
#include "QuantizeFolds.h"
#include "QuantizingCpuDevice.h"
#include "TestModels.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

using namespace melt::rt;

namespace {

/// A CPU device with FP8 products that defers branch calls to the join.
class DeferringDevice : public QuantizingCpuDevice {
public:
  DeferringDevice()
      : QuantizingCpuDevice(/*fusesSiluMul=*/true, /*quantizesExperts=*/true) {}
  ~DeferringDevice() override {
    for (DeviceTensor &t : parked_)
      QuantizingCpuDevice::release(t);
  }

  Status allocate(DType type, std::vector<int64_t> shape,
                  DeviceTensor &out) override {
    MELT_RETURN_IF_ERROR(
        QuantizingCpuDevice::allocate(type, std::move(shape), out));
    made_[static_cast<const char *>(out.data)] = {out.bytes(), ++sequence_,
                                                  inBranch_};
    if (type == DType::F32) {
      float *v = static_cast<float *>(out.data);
      std::fill(v, v + out.numel(), std::numeric_limits<float>::quiet_NaN());
    }
    return Status::ok();
  }
  void release(DeviceTensor &t) override {
    if (t.data)
      parked_.push_back(t);
    t.data = nullptr;
  }

  Status markBranch(const std::vector<DeviceTensor> &reads) override {
    ++marks;
    markSequence_ = sequence_;
    markReads_ = reads;
    return Status::ok();
  }
  Status enterBranch() override {
    inBranch_ = true;
    return Status::ok();
  }
  void leaveBranch() override { inBranch_ = false; }
  Status joinBranch() override {
    ++joins;
    std::vector<std::function<Status()>> calls = std::move(deferred_);
    deferred_.clear();
    for (auto &call : calls)
      MELT_RETURN_IF_ERROR(call());
    return Status::ok();
  }

  // The calls a branch may make: deferred, their inputs checked.
  Status linear(const DeviceTensor &x, const DeviceTensor &w,
                DeviceTensor &y) override {
    if (!inBranch_)
      return QuantizingCpuDevice::linear(x, w, y);
    return defer({x}, [this, x, w, y] {
      DeviceTensor out = y;
      return QuantizingCpuDevice::linear(x, w, out);
    });
  }
  Status linearOfSiluMul(const DeviceTensor &gate, const DeviceTensor &up,
                         const DeviceTensor &w, DeviceTensor &y) override {
    if (!inBranch_)
      return QuantizingCpuDevice::linearOfSiluMul(gate, up, w, y);
    return defer({gate, up}, [this, gate, up, w, y] {
      DeviceTensor out = y;
      return QuantizingCpuDevice::linearOfSiluMul(gate, up, w, out);
    });
  }
  Status siluMul(const DeviceTensor &gate, const DeviceTensor &up,
                 DeviceTensor &y) override {
    if (!inBranch_)
      return QuantizingCpuDevice::siluMul(gate, up, y);
    return defer({gate, up}, [this, gate, up, y] {
      DeviceTensor out = y;
      return QuantizingCpuDevice::siluMul(gate, up, out);
    });
  }
  Status roundToBf16(DeviceTensor &x) override {
    if (!inBranch_)
      return QuantizingCpuDevice::roundToBf16(x);
    return defer({x}, [this, x] {
      DeviceTensor t = x;
      return QuantizingCpuDevice::roundToBf16(t);
    });
  }
  Status quantizeBlocks(const DeviceTensor &x, int64_t block, DeviceTensor &q,
                        DeviceTensor &scales) override {
    if (!inBranch_)
      return QuantizingCpuDevice::quantizeBlocks(x, block, q, scales);
    return defer({x}, [this, x, block, q, scales] {
      DeviceTensor qq = q, ss = scales;
      return QuantizingCpuDevice::quantizeBlocks(x, block, qq, ss);
    });
  }
  Status dequantizeBlocks(const DeviceTensor &q, const DeviceTensor &scales,
                          int64_t block, DeviceTensor &y) override {
    if (!inBranch_)
      return QuantizingCpuDevice::dequantizeBlocks(q, scales, block, y);
    return defer({q, scales}, [this, q, scales, block, y] {
      DeviceTensor out = y;
      return QuantizingCpuDevice::dequantizeBlocks(q, scales, block, out);
    });
  }
  Status copy(const DeviceTensor &x, DeviceTensor &y) override {
    if (!inBranch_)
      return QuantizingCpuDevice::copy(x, y);
    return defer({x}, [this, x, y] {
      DeviceTensor out = y;
      return QuantizingCpuDevice::copy(x, out);
    });
  }

  Status slice(const DeviceTensor &x, int axis, int64_t offset,
               DeviceTensor &y) override {
    if (!inBranch_)
      return QuantizingCpuDevice::slice(x, axis, offset, y);
    return defer({x}, [this, x, axis, offset, y] {
      DeviceTensor out = y;
      return QuantizingCpuDevice::slice(x, axis, offset, out);
    });
  }
  Status place(const DeviceTensor &x, int axis, int64_t offset,
               DeviceTensor &y) override {
    if (!inBranch_)
      return QuantizingCpuDevice::place(x, axis, offset, y);
    return defer({x}, [this, x, axis, offset, y] {
      DeviceTensor out = y;
      return QuantizingCpuDevice::place(x, axis, offset, out);
    });
  }

  // Calls that have no place in a branch.
  Status add(const DeviceTensor &a, const DeviceTensor &b,
             DeviceTensor &y) override {
    strayCalls += inBranch_;
    return QuantizingCpuDevice::add(a, b, y);
  }
  Status appendLatent(const DeviceTensor &latent, const DeviceTensor &gamma,
                      float eps, const DeviceTensor &key,
                      const DeviceTensor &positions, const RopeParams &params,
                      const CacheLayout &layout, DeviceTensor &normed,
                      DeviceTensor &rotated, DeviceTensor &cache) override {
    strayCalls += inBranch_;
    return QuantizingCpuDevice::appendLatent(latent, gamma, eps, key, positions,
                                             params, layout, normed, rotated,
                                             cache);
  }
  Status rmsNorm(const DeviceTensor &x, const DeviceTensor &gamma, float eps,
                 DeviceTensor &y) override {
    if (!inBranch_)
      return QuantizingCpuDevice::rmsNorm(x, gamma, eps, y);
    return defer({x}, [this, x, gamma, eps, y] {
      DeviceTensor out = y;
      return QuantizingCpuDevice::rmsNorm(x, gamma, eps, out);
    });
  }
  Status rope(const DeviceTensor &x, const DeviceTensor &positions,
              const RopeParams &params, DeviceTensor &y) override {
    if (!inBranch_)
      return QuantizingCpuDevice::rope(x, positions, params, y);
    return defer({x, positions}, [this, x, positions, params, y] {
      DeviceTensor out = y;
      return QuantizingCpuDevice::rope(x, positions, params, out);
    });
  }
  Status moeExpertsOfQuantized(const DeviceTensor &x,
                               const DeviceTensor &indices,
                               const DeviceTensor &weights,
                               const DeviceTensor &gate, const DeviceTensor &up,
                               const DeviceTensor &down, bool combineBf16,
                               DeviceTensor &y) override {
    strayCalls += inBranch_;
    return QuantizingCpuDevice::moeExpertsOfQuantized(x, indices, weights, gate,
                                                      up, down, combineBf16, y);
  }

  int marks = 0, joins = 0, deferredCalls = 0, strayCalls = 0,
      unorderedReads = 0, undeclaredReads = 0;

private:
  struct Made {
    size_t bytes;
    uint64_t sequence;
    bool byBranch;
  };
  /// Whether a branch may read t: made before the mark, or by a branch.
  bool readable(const DeviceTensor &t) const {
    const char *p = static_cast<const char *>(t.data);
    auto it = made_.upper_bound(p);
    if (it == made_.begin())
      return true; // not the executor's memory (a weight's view)
    --it;
    if (p >= it->first + it->second.bytes)
      return true;
    return it->second.sequence <= markSequence_ || it->second.byBranch;
  }
  /// Whether t is memory the executor made before the mark, outside every
  /// value the mark said the branch reads (a device holding a call back
  /// to the branch's fork relies on that list).
  bool undeclared(const DeviceTensor &t) const {
    const char *p = static_cast<const char *>(t.data);
    auto it = made_.upper_bound(p);
    if (it == made_.begin() ||
        p >= std::prev(it)->first + std::prev(it)->second.bytes)
      return false; // not the executor's memory
    --it;
    if (it->second.byBranch || it->second.sequence > markSequence_)
      return false;
    for (const DeviceTensor &r : markReads_) {
      const char *q = static_cast<const char *>(r.data);
      if (q && p >= q && p + t.bytes() <= q + r.bytes())
        return false;
    }
    return true;
  }
  Status defer(std::initializer_list<DeviceTensor> inputs,
               std::function<Status()> call) {
    for (const DeviceTensor &t : inputs) {
      unorderedReads += !readable(t);
      undeclaredReads += undeclared(t);
    }
    ++deferredCalls;
    deferred_.push_back(std::move(call));
    return Status::ok();
  }

  bool inBranch_ = false;
  uint64_t sequence_ = 0, markSequence_ = 0;
  std::map<const char *, Made> made_;
  std::vector<DeviceTensor> markReads_;
  std::vector<DeviceTensor> parked_;
  std::vector<std::function<Status()>> deferred_;
};

/// A model on the in-order device (no branches found) and on the deferring
/// one.
struct BothWays {
  QuantizingCpuDevice inOrder{true, true};
  DeferringDevice deferring;
  std::unique_ptr<DeviceModel> onInOrder, onDeferring;

  void open(const Model &model) {
    setenv("MELT_SIDE_BRANCHES", "0", 1);
    Status s = DeviceModel::create(model, inOrder, onInOrder);
    unsetenv("MELT_SIDE_BRANCHES");
    ASSERT_FALSE(s) << s.message();
    ASSERT_FALSE(DeviceModel::create(model, deferring, onDeferring));
  }
  /// The same steps on both: branch calls deferred, none stray, none
  /// reading what the mark did not see or did not name, the logits bit
  /// for bit.
  void expectTheSameSteps(const std::string &label) {
    std::vector<float> want = stepLogits(*onInOrder),
                       have = stepLogits(*onDeferring);
    EXPECT_GT(deferring.deferredCalls, 0) << label;
    EXPECT_EQ(deferring.strayCalls, 0) << label;
    EXPECT_EQ(deferring.unorderedReads, 0) << label;
    EXPECT_EQ(deferring.undeclaredReads, 0) << label;
    expectSameLogits(have, want);
  }
};

} // namespace

TEST(SideBranches, SharedExpertsQueriesAndUpProductsRunBesideTheRest) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  const fb::Model &m = model->artifact().model();
  BothWays both;
  both.open(*model);
  if (HasFatalFailure())
    return;
  DeferringDevice &deferring = both.deferring;
  const std::unique_ptr<DeviceModel> &onDeferring = both.onDeferring;
  EXPECT_EQ(both.onInOrder->sideBranches(), 0u);

  // One branch a MoE layer, the shared expert's products, its SiLU-mul
  // and quantize pair, joined at the sum of the two experts' results
  // (the routed experts beside it); one an MLA layer, the query's norm,
  // q_b product and RoPE, joined at MLA (the latent's norm, the key's RoPE
  // and the cache append beside it); and one a dense MLP, its up product
  // beside its gate product, joined at their SiLU-mul.
  const fb::Function &forward = onDeferring->forward();
  // As the executor sees them: the folded quantize pairs' values are views
  // of their x.
  std::vector<QuantizeFold> folds =
      findQuantizeFolds(m, forward, [&](uint32_t k) {
        const fb::Kernel &kernel = *m.kernels()->Get(k);
        return kernel.weights() && kernel.weights()->size() >= 1 &&
               (kernel.kind() == fb::KernelKind::MoEExperts
                    ? deferring.quantizesExpertInput(
                          onDeferring->weight(kernel.weights()->Get(0)))
                    : deferring.quantizesFp8Input(
                          onDeferring->weight(kernel.weights()->Get(0))));
      });
  std::map<uint32_t, uint32_t> views;
  for (const QuantizeFold &f : folds)
    views[m.kernels()->Get(f.dequantize)->outputs()->Get(0)] = f.source;
  ASSERT_FALSE(views.empty());
  std::vector<SideBranch> branches = findSideBranches(m, forward, views);
  uint32_t moeLayers = 0, mlaLayers = 0, mlps = 0;
  for (uint32_t k : *forward.kernels()) {
    moeLayers += m.kernels()->Get(k)->kind() == fb::KernelKind::MoEExperts;
    mlaLayers += m.kernels()->Get(k)->kind() == fb::KernelKind::MLA;
    mlps += m.kernels()->Get(k)->kind() == fb::KernelKind::SiluMul;
  }
  const uint32_t denseMlps = mlps - moeLayers;
  ASSERT_GT(moeLayers, 0u);
  ASSERT_GT(mlaLayers, 0u);
  ASSERT_GT(denseMlps, 0u);
  std::map<fb::KernelKind, uint32_t> joins;
  for (const SideBranch &b : branches) {
    std::map<fb::KernelKind, int> kinds;
    for (uint32_t k : b.kernels)
      ++kinds[m.kernels()->Get(k)->kind()];
    const fb::KernelKind join = m.kernels()->Get(b.join)->kind();
    ++joins[join];
    if (join == fb::KernelKind::Add) {
      EXPECT_EQ(kinds[fb::KernelKind::Linear], 3) << "gate, up and down";
      // The router too: the experts' quantize pair is folded, their x
      // (the norm's) made before it.
      EXPECT_EQ(m.kernels()->Get(b.markBefore)->kind(),
                fb::KernelKind::MoERouter);
    } else if (join == fb::KernelKind::MLA) {
      EXPECT_EQ(kinds[fb::KernelKind::Linear], 1) << "q_b";
      EXPECT_EQ(kinds[fb::KernelKind::RMSNorm], 1) << "q_a's norm";
      EXPECT_EQ(kinds[fb::KernelKind::Rope], 1) << "the query's RoPE";
    } else {
      EXPECT_EQ(join, fb::KernelKind::SiluMul);
      EXPECT_EQ(b.kernels.size(), 1u) << "up";
    }
  }
  EXPECT_EQ(joins[fb::KernelKind::Add], moeLayers);
  EXPECT_EQ(joins[fb::KernelKind::MLA], mlaLayers);
  EXPECT_EQ(joins[fb::KernelKind::SiluMul], denseMlps);
  EXPECT_EQ(branches.size(), moeLayers + mlaLayers + denseMlps);
  EXPECT_EQ(onDeferring->sideBranches(), branches.size());

  both.expectTheSameSteps("v3-tiny, deepseek-v3 policy");
  EXPECT_EQ(deferring.marks, deferring.joins);
}

// Every golden model a test run names (MELT_TEST_MODELS: FP32, V2-Lite
// without query compression, FP8 weights): its branches deferred to their
// joins give the in-order logits bit for bit, and each has some.
TEST(SideBranches, EveryGoldenModelDefersItsBranches) {
  std::vector<Compiled> models = modelsFromEnvironment();
  if (models.empty())
    GTEST_SKIP() << "no compiled model in the environment";
  for (const Compiled &c : models) {
    std::unique_ptr<Model> model = loadCompiled(c);
    ASSERT_TRUE(model);
    BothWays both;
    both.open(*model);
    if (HasFatalFailure())
      return;
    EXPECT_GT(both.onDeferring->sideBranches(), 0u) << c.artifact;
    both.expectTheSameSteps(c.artifact);
  }
}
