// An MLP's gate, up and SiLU-mul as one device call (GateUpPairs.h): the
// executor finds the dense MLP's pair, and on a CPU device that takes the
// call at one row (its default: the two products, then the SiLU-mul) the
// logits are bit for bit the plain CPU device's, with the call taken at
// every decode step; the up product's side branch is then not forked.
// Needs MELT_TEST_FP8_POLICY_ARTIFACT (v3-tiny compiled with
// --precision=deepseek-v3) and MELT_TEST_FP8_POLICY_CHECKPOINT.
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

/// A CPU device that takes an MLP's gate, up and SiLU-mul as one call at
/// one row, and counts the calls and the side branches forked.
class PairingCpuDevice : public CpuDevice {
public:
  int calls = 0, marks = 0;

  bool takesSiluMulOfProducts(const DeviceTensor &, const DeviceTensor &,
                              int64_t rows) const override {
    return rows == 1;
  }
  Status siluMulOfProducts(const DeviceTensor &x, const DeviceTensor &wGate,
                           const DeviceTensor &wUp, bool roundProducts,
                           DeviceTensor &y) override {
    ++calls;
    EXPECT_EQ(x.rows(), 1);
    return CpuDevice::siluMulOfProducts(x, wGate, wUp, roundProducts, y);
  }
  Status markBranch(const std::vector<DeviceTensor> &reads) override {
    ++marks;
    return CpuDevice::markBranch(reads);
  }
};

} // namespace

TEST(GateUpPairs, OneCallMatchesTheThreeKernels) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  CpuDevice plain;
  PairingCpuDevice pairing;
  std::unique_ptr<DeviceModel> onPlain, onPairing;
  ASSERT_FALSE(DeviceModel::create(*model, plain, onPlain));
  ASSERT_FALSE(DeviceModel::create(*model, pairing, onPairing));
  // v3-tiny's dense MLP, and its two shared experts' gate and up where no
  // experts' call takes them (the FP8 policy's quantize pairs keep them
  // apart on this device).
  const size_t pairs = onPairing->gateUpPairs();
  EXPECT_GE(pairs, 1u);
  std::vector<float> want = stepLogits(*onPlain), have = stepLogits(*onPairing);
  // Every pair at each of four decode steps of two sequences, one token
  // each (and where a prefill runs a pair on its last row alone).
  EXPECT_GE(pairing.calls, int(8 * pairs));
  expectSameLogits(have, want);
}

TEST(GateUpPairs, LeaveTheUpProductsBranchUnforked) {
  std::unique_ptr<Model> model = loadFp8PolicyModel();
  if (!model)
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT / "
                    "MELT_TEST_FP8_POLICY_CHECKPOINT not set";
  // The same steps with the pairs off: a fork more for each taken call
  // where the up product is a side branch of its own.
  PairingCpuDevice pairing, unpaired;
  std::unique_ptr<DeviceModel> onPairing, onUnpaired;
  ASSERT_FALSE(DeviceModel::create(*model, pairing, onPairing));
  setenv("MELT_FUSE_GATE_UP", "0", 1);
  Status s = DeviceModel::create(*model, unpaired, onUnpaired);
  unsetenv("MELT_FUSE_GATE_UP");
  ASSERT_FALSE(s) << s.message();
  EXPECT_EQ(onUnpaired->gateUpPairs(), 0u);
  std::vector<float> paired = stepLogits(*onPairing),
                     apart = stepLogits(*onUnpaired);
  expectSameLogits(paired, apart);
  EXPECT_EQ(unpaired.calls, 0);
  EXPECT_GT(pairing.calls, 0);
  EXPECT_LT(pairing.marks, unpaired.marks);
}
