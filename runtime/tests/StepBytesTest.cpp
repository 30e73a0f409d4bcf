//===- StepBytesTest.cpp - the weight bytes a decode step reads -----------===//
//
// decodeStepWeightBytes against counts by hand of the golden v3-tiny
// (hidden 64, vocab 256, 3 layers of which 1 dense, 4 heads, q_lora 32,
// kv_lora 32, nope/rope/value 16/8/16, intermediate 256, 8 routed experts
// of 32 with top 2, 1 shared; an f32 checkpoint) in three precision
// policies, and the C API that reports it.
//
//===----------------------------------------------------------------------===//
#include "StepBytes.h"
#include "TestModels.h"

#include "melt/runtime.h"

#include <gtest/gtest.h>

#include <cstdlib>

using namespace melt::rt;

namespace {

// v3-tiny's values a step reads, by what the policies keep apart.
// Attention's products a layer: qkv_a 72x64, q_b 96x32, o_proj 64x64.
constexpr uint64_t kAttentionProducts = 3 * (4608 + 3072 + 4096);
// The dense layer's gate, up (256x64) and down (64x256).
constexpr uint64_t kDenseMlp = 3 * 16384;
// Two MoE layers: 2 of the 8 routed experts' three 32x64 matrices, and
// the shared expert's three.
constexpr uint64_t kRoutedPicked = 2 * (2 * 3 * 2048);
constexpr uint64_t kShared = 2 * (3 * 2048);
constexpr uint64_t kLmHead = 256 * 64;
// The rest, kept as the f32 checkpoint in every policy: the embedding's
// row, the norms (64 + 32 + 32 + 64 a layer, the final 64), W_UK and W_UV
// (2048 each a layer) and the two routers (64x8 and a bias of 8).
constexpr uint64_t kRestF32 = 64 + 3 * 192 + 64 + 3 * 4096 + 2 * 520;

std::string pathFromEnvironment(const char *variable) {
  const char *path = std::getenv(variable);
  return path ? path : "";
}

uint64_t bytesOfArtifact(const std::string &path) {
  Artifact artifact;
  Status s = Artifact::load(path, artifact);
  EXPECT_TRUE(s.isOk()) << s.message();
  return s.isOk() ? decodeStepWeightBytes(artifact) : 0;
}

} // namespace

TEST(StepBytes, Fp32PolicyReadsFourBytesAValue) {
  std::string fp32;
  for (const Compiled &c : modelsFromEnvironment())
    if (c.artifact.size() >= 12 &&
        c.artifact.compare(c.artifact.size() - 12, 12, "v3-tiny.melt") == 0)
      fp32 = c.artifact;
  if (fp32.empty())
    GTEST_SKIP() << "no v3-tiny.melt in MELT_TEST_MODELS";
  EXPECT_EQ(bytesOfArtifact(fp32),
            4 * (kAttentionProducts + kDenseMlp + kRoutedPicked + kShared +
                 kLmHead + kRestF32));
}

TEST(StepBytes, Bf16PolicyHalvesTheProducts) {
  const std::string bf16 = pathFromEnvironment("MELT_TEST_CUDA_ARTIFACT");
  if (bf16.empty())
    GTEST_SKIP() << "MELT_TEST_CUDA_ARTIFACT (v3-tiny, bf16) is not set";
  EXPECT_EQ(bytesOfArtifact(bf16), 2 * (kAttentionProducts + kDenseMlp +
                                        kRoutedPicked + kShared + kLmHead) +
                                       4 * kRestF32);
}

TEST(StepBytes, DeepSeekPolicyCountsFp8BlocksAndTheirScales) {
  const std::string fp8 = pathFromEnvironment("MELT_TEST_FP8_POLICY_ARTIFACT");
  if (fp8.empty())
    GTEST_SKIP() << "MELT_TEST_FP8_POLICY_ARTIFACT is not set";
  // An f32 scale a 128x128 block: one for each attention product, two for
  // each dense matrix (256 rows or columns), one for each expert matrix;
  // the output head in BF16 (DeepSeek-V3's recipe).
  constexpr uint64_t kScales = 4 * (3 * 3 + 3 * 2 + 2 * 2 * 3 + 2 * 3);
  EXPECT_EQ(bytesOfArtifact(fp8), kAttentionProducts + kDenseMlp +
                                      kRoutedPicked + kShared + kScales +
                                      2 * kLmHead + 4 * kRestF32);
}

TEST(StepBytes, ReportedThroughTheCApi) {
  const std::string path = pathFromEnvironment("MELT_TEST_ARTIFACT");
  const std::string checkpoint = pathFromEnvironment("MELT_TEST_CHECKPOINT");
  if (path.empty() || checkpoint.empty())
    GTEST_SKIP() << "MELT_TEST_ARTIFACT/MELT_TEST_CHECKPOINT are not set";
  melt_model *model = nullptr;
  ASSERT_EQ(melt_model_load(path.c_str(), checkpoint.c_str(), &model), MELT_OK)
      << melt_last_error();
  long long bytes = 0;
  ASSERT_EQ(melt_model_decode_weight_bytes(model, &bytes), MELT_OK);
  EXPECT_EQ(uint64_t(bytes), bytesOfArtifact(path));
  EXPECT_EQ(melt_model_decode_weight_bytes(model, nullptr),
            MELT_INVALID_ARGUMENT);
  EXPECT_EQ(melt_model_decode_weight_bytes(nullptr, &bytes),
            MELT_INVALID_ARGUMENT);
  // The CPU measures no copy bandwidth; it says so.
  double gbps = -1;
  EXPECT_EQ(melt_model_copy_bandwidth(model, &gbps), MELT_UNSUPPORTED);
  EXPECT_EQ(gbps, 0);
  EXPECT_EQ(melt_model_copy_bandwidth(model, nullptr), MELT_INVALID_ARGUMENT);
  melt_model_destroy(model);
}
