//===- Fp8PolicySessions.h - the deepseek-v3 golden model in sessions ----===//
//
// For the executor's tests that compare a device with FP8 products
// (QuantizingCpuDevice.h) against the plain CPU device: the golden v3-tiny
// compiled with --precision=deepseek-v3 (MELT_TEST_FP8_POLICY_ARTIFACT and
// MELT_TEST_FP8_POLICY_CHECKPOINT), a few steps of it in a session, and the
// logits compared bit for bit (the steps and the comparison serve the
// tests of other policies' models too).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_TESTS_FP8POLICYSESSIONS_H
#define MELT_RUNTIME_TESTS_FP8POLICYSESSIONS_H

#include "Executor.h"
#include "Model.h"
#include "Session.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <numeric>
#include <vector>

namespace melt::rt {

/// The model the environment variables `artifactVariable` and
/// `checkpointVariable` name, or null where they name none.
inline std::unique_ptr<Model>
loadModelFromEnvironment(const char *artifactVariable,
                         const char *checkpointVariable) {
  const char *artifact = std::getenv(artifactVariable);
  const char *checkpoint = std::getenv(checkpointVariable);
  if (!artifact || !checkpoint)
    return nullptr;
  std::unique_ptr<Model> model;
  Status s = Model::load(artifact, checkpoint, model, /*keepHostData=*/true);
  EXPECT_FALSE(s) << s.message();
  return model;
}

/// The deepseek-v3 policy's model, or null where the environment names
/// none.
inline std::unique_ptr<Model> loadFp8PolicyModel() {
  return loadModelFromEnvironment("MELT_TEST_FP8_POLICY_ARTIFACT",
                                  "MELT_TEST_FP8_POLICY_CHECKPOINT");
}

/// Two sequences, prefills of 20 and 6 tokens, then 4 decode steps of
/// each; every step's logits.
inline std::vector<float> stepLogits(const DeviceModel &dm) {
  std::unique_ptr<Session> session;
  Status s = Session::create(dm, 64, 2 * kPageTokens, session); // a page each
  EXPECT_FALSE(s) << s.message();
  if (s)
    return {};
  int32_t ids[2] = {0, 0};
  std::vector<float> all;
  for (int32_t &id : ids)
    EXPECT_FALSE(session->addSequence(id));
  for (int step = 0; step < 5; ++step)
    for (int i = 0; i < 2; ++i) {
      std::vector<int32_t> tokens(step ? 1 : (i ? 6 : 20));
      std::iota(tokens.begin(), tokens.end(), 3 + 11 * i + 7 * step);
      s = session->append(ids[i], tokens.data(), tokens.size());
      EXPECT_FALSE(s) << s.message();
      const float *logits = nullptr;
      size_t vocab = 0;
      EXPECT_FALSE(session->logits(ids[i], logits, vocab));
      if (logits)
        all.insert(all.end(), logits, logits + vocab);
    }
  return all;
}

/// DeviceModel::create with the executor switch `name` (an environment
/// variable read as the model is made) set to 0 meanwhile.
inline Status createWithSwitchOff(const Model &model, Device &device,
                                  const char *name,
                                  std::unique_ptr<DeviceModel> &out) {
  setenv(name, "0", 1);
  Status s = DeviceModel::create(model, device, out);
  unsetenv(name);
  return s;
}

/// The indices of the model's @forward kernels of `kind`.
inline std::vector<uint32_t> forwardKernelsOf(const Model &model,
                                              fb::KernelKind kind) {
  const fb::Model &m = model.artifact().model();
  std::vector<uint32_t> found;
  for (uint32_t k : *model.artifact().function("forward")->kernels())
    if (m.kernels()->Get(k)->kind() == kind)
      found.push_back(k);
  return found;
}

/// The MLA kernels of the model's @forward.
inline size_t mlaLayers(const DeviceModel &dm) {
  size_t n = 0;
  for (uint32_t k : *dm.forward().kernels())
    n += dm.model().artifact().model().kernels()->Get(k)->kind() ==
         fb::KernelKind::MLA;
  return n;
}

/// `have` is `want` bit for bit (and not empty).
inline void expectSameLogits(const std::vector<float> &have,
                             const std::vector<float> &want) {
  ASSERT_FALSE(want.empty());
  ASSERT_EQ(have.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_EQ(have[i], want[i]) << "logit " << i;
}

} // namespace melt::rt

#endif // MELT_RUNTIME_TESTS_FP8POLICYSESSIONS_H
