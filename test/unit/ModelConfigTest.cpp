//===- ModelConfigTest.cpp - configuration validation -----------*- C++ -*-===//
#include "frontends/ModelConfig.h"

#include <gtest/gtest.h>

using namespace mlir::melt;

namespace {

/// The message of a failed validation ("" when it passed).
std::string problems(const ModelConfig &config) {
  llvm::Error error = validate(config);
  return error ? llvm::toString(std::move(error)) : "";
}

ModelConfig tiny() { return llvm::cantFail(getBuiltinModel("tiny")); }

TEST(ModelConfig, EveryBuiltinValidates) {
  for (const std::string &name : builtinModelNames()) {
    llvm::Expected<ModelConfig> config = getBuiltinModel(name);
    ASSERT_TRUE(static_cast<bool>(config)) << name;
    EXPECT_EQ(problems(*config), "") << name;
  }
}

TEST(ModelConfig, UnknownBuiltinListsKnownNames) {
  llvm::Expected<ModelConfig> config = getBuiltinModel("v4");
  ASSERT_FALSE(static_cast<bool>(config));
  std::string message = llvm::toString(config.takeError());
  EXPECT_NE(message.find("unknown built-in model 'v4'"), std::string::npos);
  EXPECT_NE(message.find("tiny, mini, v2-lite, v2, v3"), std::string::npos);
}

TEST(ModelConfig, TinyIsSmallButHasEveryFeature) {
  ModelConfig c = tiny();
  EXPECT_LE(c.vocabSize, 1024);
  EXPECT_LE(c.hiddenSize, 256);
  int moeLayers = 0;
  for (int64_t i = 0; i < c.numHiddenLayers; ++i)
    moeLayers += c.isMoELayer(i);
  EXPECT_GE(moeLayers, 2);
  EXPECT_GE(c.nRoutedExperts, 8);
  EXPECT_GE(c.nGroup, 2);
  EXPECT_GE(c.numNextnPredictLayers, 1);
  EXPECT_TRUE(c.qLoraRank.has_value());
  EXPECT_TRUE(c.yarn.has_value());
}

TEST(ModelConfig, V3SoftmaxScaleMatchesReference) {
  // 192^-0.5 * (0.1 ln 40 + 1)^2 (shared/reference/deepseek-v3.md).
  ModelConfig c = llvm::cantFail(getBuiltinModel("v3"));
  EXPECT_NEAR(c.softmaxScale(), 0.13524, 1e-5);
}

TEST(ModelConfig, CrossFieldErrorsNameTheirFields) {
  ModelConfig c = tiny();
  c.numExpertsPerTok = 9;
  c.topkGroup = 5;
  c.firstKDenseReplace = 4;
  std::string message = problems(c);
  EXPECT_NE(message.find("'num_experts_per_tok': (9) exceeds n_routed_experts "
                         "(8)"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("'topk_group': (5) exceeds n_group (4)"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("'first_k_dense_replace': (4) exceeds "
                         "num_hidden_layers (3)"),
            std::string::npos)
      << message;
}

TEST(ModelConfig, GroupsMustDivideExperts) {
  ModelConfig c = tiny();
  c.nGroup = 3;
  c.topkGroup = 1;
  EXPECT_NE(problems(c).find("'n_group': (3) does not divide n_routed_experts "
                             "(8)"),
            std::string::npos);
}

TEST(ModelConfig, KeptGroupsMustHoldTopK) {
  ModelConfig c = tiny();
  c.topkGroup = 1; // 1 group of 2 experts
  c.numExpertsPerTok = 3;
  EXPECT_NE(problems(c).find("exceeds the 2 experts of the topk_group (1) "
                             "groups"),
            std::string::npos)
      << problems(c);
  c.topkMethod = "greedy"; // greedy ignores groups
  EXPECT_EQ(problems(c), "");
}

TEST(ModelConfig, UnsupportedStringsAreErrors) {
  ModelConfig c = tiny();
  c.scoringFunc = "relu";
  c.topkMethod = "random";
  std::string message = problems(c);
  EXPECT_NE(message.find("'scoring_func': unsupported value \"relu\""),
            std::string::npos);
  EXPECT_NE(message.find("'topk_method': unsupported value \"random\""),
            std::string::npos);
}

TEST(ModelConfig, RangesAreChecked) {
  ModelConfig c = tiny();
  c.hiddenSize = 0;
  c.qkRopeHeadDim = 7;
  c.qLoraRank = -1;
  c.rmsNormEps = 0.0;
  c.yarn->factor = 0.5;
  c.yarn->betaSlow = 40.0;
  std::string message = problems(c);
  for (const char *field :
       {"'hidden_size': must be positive", "'qk_rope_head_dim': must be even",
        "'q_lora_rank': must be positive or null", "'rms_norm_eps'",
        "'rope_scaling.factor'", "'rope_scaling.beta_fast'"})
    EXPECT_NE(message.find(field), std::string::npos) << field << "\n"
                                                      << message;
}

TEST(ModelConfig, OnlyBlocksOf128AreSupported) {
  ModelConfig c = tiny();
  c.weightFormat = WeightFormat::FP8Block;
  c.weightBlockSize = 64;
  EXPECT_NE(problems(c).find("'quantization_config.weight_block_size'"),
            std::string::npos);
}

} // namespace
