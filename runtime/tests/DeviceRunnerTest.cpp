// A whole model through the Device interface, on every present device:
// DeviceRunner's logits for a prefill and greedy decode steps against the
// CPU session's (which match transformers, test/unit/GoldenLogitsTest), on
// the compiled golden models of the environment:
//   MELT_TEST_MODELS="ARTIFACT:CHECKPOINT;..." (';' or '|' between them) or
//   MELT_TEST_ARTIFACT and MELT_TEST_CHECKPOINT (test.sh and ctest set
//   these).
#include "DeviceRunner.h"
#include "melt/runtime.h"

#include "DeviceTestNames.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>

using namespace melt::rt;

namespace {

struct Compiled {
  std::string artifact, checkpoint;
};

std::vector<Compiled> modelsFromEnvironment() {
  std::vector<Compiled> models;
  if (const char *list = std::getenv("MELT_TEST_MODELS")) {
    std::string text = list;
    std::replace(text.begin(), text.end(), '|', ';');
    std::stringstream entries(text);
    std::string entry;
    while (std::getline(entries, entry, ';')) {
      size_t colon = entry.find(':');
      if (colon != std::string::npos)
        models.push_back({entry.substr(0, colon), entry.substr(colon + 1)});
    }
  } else if (std::getenv("MELT_TEST_ARTIFACT") &&
             std::getenv("MELT_TEST_CHECKPOINT")) {
    models.push_back({std::getenv("MELT_TEST_ARTIFACT"),
                      std::getenv("MELT_TEST_CHECKPOINT")});
  }
  return models;
}

/// max |a - b| over the range of b.
double errorOfRange(const std::vector<float> &a, const float *b, size_t n) {
  float lo = *std::min_element(b, b + n), hi = *std::max_element(b, b + n);
  double worst = 0;
  for (size_t i = 0; i < n; ++i)
    worst = std::max(worst, double(std::fabs(a[i] - b[i])));
  return worst / std::max(1e-30, double(hi - lo));
}

class DeviceRunnerTest : public ::testing::TestWithParam<std::string> {};

TEST_P(DeviceRunnerTest, MatchesTheCpuSession) {
  std::vector<Compiled> models = modelsFromEnvironment();
  if (models.empty())
    GTEST_SKIP() << "no compiled model in the environment";
  std::unique_ptr<Device> device;
  Status s = openDevice(GetParam(), device);
  ASSERT_FALSE(s) << s.message();
  for (const Compiled &c : models) {
    std::unique_ptr<Model> model;
    s = Model::load(c.artifact, c.checkpoint, model, /*keepHostData=*/true);
    ASSERT_FALSE(s) << c.artifact << ": " << s.message();
    std::unique_ptr<DeviceRunner> runner;
    s = DeviceRunner::create(*model, *device, 64, runner);
    ASSERT_FALSE(s) << c.artifact << ": " << s.message();

    melt_model *cpuModel = nullptr;
    ASSERT_EQ(
        melt_model_load(c.artifact.c_str(), c.checkpoint.c_str(), &cpuModel),
        MELT_OK);
    melt_session *session = nullptr;
    melt_session_options options{64, 64};
    ASSERT_EQ(melt_session_create(cpuModel, &options, &session), MELT_OK);
    int sequence = 0;
    ASSERT_EQ(melt_session_add_sequence(session, &sequence), MELT_OK);
    const size_t vocab = size_t(melt_model_vocab_size(cpuModel));

    std::vector<int32_t> tokens = {1, 17, 42, 99, 3, 250, 7, 128};
    double worst = 0;
    for (int step = 0; step < 9; ++step) {
      std::vector<float> got;
      s = runner->append(tokens, got);
      ASSERT_FALSE(s) << c.artifact << " step " << step << ": " << s.message();
      std::vector<int> ids(tokens.begin(), tokens.end());
      std::vector<float> want(ids.size() * vocab);
      ASSERT_EQ(melt_session_append(session, sequence, ids.data(), ids.size(),
                                    want.data()),
                MELT_OK);
      ASSERT_EQ(got.size(), want.size());
      for (size_t t = 0; t < ids.size(); ++t) {
        std::vector<float> row(got.begin() + t * vocab,
                               got.begin() + (t + 1) * vocab);
        worst = std::max(worst, errorOfRange(row, &want[t * vocab], vocab));
      }
      // Greedy: the next token from the device's last logits.
      auto last = got.end() - vocab;
      tokens = {int32_t(std::max_element(last, got.end()) - last)};
    }
    std::printf("%s on %s: prefill 8 + 8 decode steps, max abs logit "
                "difference %.3g of the range from the CPU session\n",
                c.artifact.c_str(), device->name().c_str(), worst);
    // FP32 both, different summation orders (and absorbed vs decompressed
    // MLA on the CPU's side): the FP32 bound against transformers.
    EXPECT_LE(worst, 1e-3) << c.artifact;
    melt_session_destroy(session);
    melt_model_destroy(cpuModel);
  }
}

TEST_P(DeviceRunnerTest, FullCacheIsAClearError) {
  std::vector<Compiled> models = modelsFromEnvironment();
  if (models.empty())
    GTEST_SKIP() << "no compiled model in the environment";
  std::unique_ptr<Device> device;
  ASSERT_FALSE(openDevice(GetParam(), device));
  std::unique_ptr<Model> model;
  ASSERT_FALSE(
      Model::load(models[0].artifact, models[0].checkpoint, model, true));
  std::unique_ptr<DeviceRunner> runner;
  ASSERT_FALSE(DeviceRunner::create(*model, *device, 4, runner));
  std::vector<float> logits;
  ASSERT_FALSE(runner->append({1, 2, 3}, logits));
  Status s = runner->append({4, 5}, logits);
  ASSERT_TRUE(s);
  EXPECT_EQ(s.code(), MELT_RESOURCE_EXHAUSTED) << s.message();
  EXPECT_EQ(runner->length(), 3);
  // A bad token is an error; the sequence is unchanged and goes on.
  s = runner->append({1 << 30}, logits);
  ASSERT_TRUE(s);
  EXPECT_NE(s.message().find("outside the vocabulary"), std::string::npos)
      << s.message();
  EXPECT_EQ(runner->length(), 3);
  EXPECT_FALSE(runner->append({4}, logits));
}

// Benchmarks run without a checkpoint: seeded random weights, finite
// logits, the same ones for the same seed.
TEST_P(DeviceRunnerTest, RandomWeightsRun) {
  std::vector<Compiled> models = modelsFromEnvironment();
  if (models.empty())
    GTEST_SKIP() << "no compiled model in the environment";
  std::unique_ptr<Device> device;
  ASSERT_FALSE(openDevice(GetParam(), device));
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {
    std::unique_ptr<Model> model;
    Status s = Model::loadRandom(models[0].artifact, 7, model);
    ASSERT_FALSE(s) << s.message();
    std::unique_ptr<DeviceRunner> runner;
    ASSERT_FALSE(DeviceRunner::create(*model, *device, 16, runner));
    std::vector<float> logits;
    s = runner->append({1, 2, 3}, logits);
    ASSERT_FALSE(s) << s.message();
    for (float v : logits)
      ASSERT_TRUE(std::isfinite(v));
    if (run == 0)
      first = logits;
    else
      EXPECT_EQ(logits, first);
  }
}

INSTANTIATE_TEST_SUITE_P(Present, DeviceRunnerTest,
                         ::testing::ValuesIn(availableDevices()),
                         deviceTestName);

} // namespace
