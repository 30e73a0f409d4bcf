//===- HFConfigTest.cpp - config.json parsing -------------------*- C++ -*-===//
#include "frontends/hf/HFConfig.h"
#include "frontends/hf/StrictJson.h"

#include <gtest/gtest.h>

using namespace mlir::melt;

namespace {

llvm::Expected<ModelConfig> parse(llvm::StringRef text) {
  auto json = parseStrictJson(text, "config.json");
  if (!json)
    return json.takeError();
  return parseHFConfig(*json, "config.json");
}

/// DeepSeek-V3's own config.json (the fields melt reads, original style).
constexpr const char *kV3 = R"({
  "architectures": ["DeepseekV3ForCausalLM"],
  "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
  "model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168,
  "intermediate_size": 18432, "moe_intermediate_size": 2048,
  "num_hidden_layers": 61, "first_k_dense_replace": 3, "moe_layer_freq": 1,
  "num_attention_heads": 128, "num_key_value_heads": 128,
  "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
  "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 256,
  "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8,
  "topk_group": 4, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
  "topk_method": "noaux_tc", "norm_topk_prob": true,
  "num_nextn_predict_layers": 1, "rms_norm_eps": 1e-06,
  "hidden_act": "silu", "tie_word_embeddings": false, "rope_theta": 10000,
  "max_position_embeddings": 163840, "torch_dtype": "bfloat16",
  "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                   "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                          "quant_method": "fp8", "weight_block_size": [128, 128]}
})";

TEST(HFConfig, ReadsDeepSeekV3) {
  auto c = parse(kV3);
  ASSERT_TRUE(static_cast<bool>(c)) << llvm::toString(c.takeError());
  auto v3 = llvm::cantFail(getBuiltinModel("v3"));
  EXPECT_EQ(c->weightFormat, WeightFormat::FP8Block);
  EXPECT_EQ(c->hiddenSize, v3.hiddenSize);
  EXPECT_EQ(c->qLoraRank, v3.qLoraRank);
  EXPECT_EQ(c->topkMethod, "noaux_tc");
  ASSERT_TRUE(c->yarn.has_value());
  EXPECT_EQ(c->yarn->factor, 40.0);
  EXPECT_NEAR(c->softmaxScale(), 0.13524, 1e-5);
}

TEST(HFConfig, WrittenConfigReadsBack) {
  for (const std::string &name : builtinModelNames()) {
    ModelConfig original = llvm::cantFail(getBuiltinModel(name));
    std::string text;
    llvm::raw_string_ostream os(text);
    os << toHFConfig(original);
    auto c = parse(text);
    ASSERT_TRUE(static_cast<bool>(c)) << name << ": "
                                      << llvm::toString(c.takeError());
    EXPECT_EQ(c->numHiddenLayers, original.numHiddenLayers) << name;
    EXPECT_EQ(c->qLoraRank, original.qLoraRank) << name;
    EXPECT_EQ(c->weightFormat, original.weightFormat) << name;
    EXPECT_EQ(c->topkMethod, original.topkMethod) << name;
    EXPECT_EQ(c->yarn.has_value(), original.yarn.has_value()) << name;
  }
}

TEST(HFConfig, TransformersFiveStyle) {
  auto c = parse(R"({"model_type": "deepseek_v3", "vocab_size": 256,
    "hidden_size": 64, "intermediate_size": 256, "moe_intermediate_size": 32,
    "num_hidden_layers": 3, "first_k_dense_replace": 1,
    "num_attention_heads": 4, "q_lora_rank": null, "kv_lora_rank": 32,
    "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
    "qk_head_dim": 24, "head_dim": 8, "n_routed_experts": 8,
    "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
    "dtype": "float32", "rope_interleave": true,
    "rope_parameters": {"rope_type": "yarn", "rope_theta": 5000.0, "factor": 4.0,
                        "original_max_position_embeddings": 64}})");
  ASSERT_TRUE(static_cast<bool>(c)) << llvm::toString(c.takeError());
  EXPECT_FALSE(c->qLoraRank.has_value());
  EXPECT_EQ(c->ropeTheta, 5000.0);
  EXPECT_EQ(c->weightFormat, WeightFormat::F32);
  // transformers' DeepseekV3 routes with sigmoid + bias whatever the config.
  EXPECT_EQ(c->scoringFunc, "sigmoid");
  EXPECT_EQ(c->topkMethod, "noaux_tc");
  ASSERT_TRUE(c->yarn.has_value());
  EXPECT_EQ(c->yarn->originalMaxPositionEmbeddings, 64);
}

/// DeepSeek-V2-Lite's config.json (original style, model_type deepseek_v2,
/// no scoring_func: softmax).
constexpr const char *kV2Lite = R"({
  "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
  "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
  "moe_intermediate_size": 1408, "num_hidden_layers": 27,
  "first_k_dense_replace": 1, "moe_layer_freq": 1, "num_attention_heads": 16,
  "num_key_value_heads": 16, "q_lora_rank": null, "kv_lora_rank": 512,
  "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
  "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
  "n_group": 1, "topk_group": 1, "topk_method": "greedy",
  "norm_topk_prob": false, "routed_scaling_factor": 1.0,
  "aux_loss_alpha": 0.001, "seq_aux": true, "rms_norm_eps": 1e-06,
  "rope_theta": 10000, "max_position_embeddings": 163840,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40,
                   "mscale": 0.707, "mscale_all_dim": 0.707,
                   "original_max_position_embeddings": 4096, "type": "yarn"},
  "torch_dtype": "bfloat16", "tie_word_embeddings": false
})";

TEST(HFConfig, ReadsDeepSeekV2Lite) {
  auto c = parse(kV2Lite);
  ASSERT_TRUE(static_cast<bool>(c)) << llvm::toString(c.takeError());
  EXPECT_FALSE(c->qLoraRank.has_value());
  EXPECT_EQ(c->scoringFunc, "softmax");
  EXPECT_EQ(c->topkMethod, "greedy");
  EXPECT_EQ(c->weightFormat, WeightFormat::BF16);
  EXPECT_EQ(c->nSharedExperts, 2);
  EXPECT_NEAR(c->yarn->mscaleAllDim, 0.707, 1e-12);
}

TEST(HFConfig, EveryProblemIsListed) {
  auto c = parse(R"({"model_type": "deepseek_v3", "vocab_size": "big",
                     "num_hidden_layers": 2.5})");
  ASSERT_FALSE(static_cast<bool>(c));
  std::string message = llvm::toString(c.takeError());
  for (const char *expected :
       {"config.json: 'vocab_size': must be an integer, got a string",
        "config.json: 'hidden_size': required field is missing",
        "config.json: 'q_lora_rank': required field is missing"})
    EXPECT_NE(message.find(expected), std::string::npos) << message;
}

TEST(StrictJson, LocatesSyntaxErrors) {
  auto v = parseStrictJson("{\n  \"a\": 1,\n  \"b\" 2\n}", "x.json");
  ASSERT_FALSE(static_cast<bool>(v));
  EXPECT_EQ(llvm::toString(v.takeError()),
            "x.json: 3:7: invalid JSON: Expected : after object key");
}

TEST(StrictJson, RejectsDuplicateKeysAtAnyDepth) {
  auto v = parseStrictJson(R"({"a": {"x": 1, "y": [{"k": 1, "k": 2}]}})",
                           "x.json");
  ASSERT_FALSE(static_cast<bool>(v));
  EXPECT_NE(llvm::toString(v.takeError()).find("duplicate key \"k\""),
            std::string::npos);
  // The same key in sibling objects is fine.
  EXPECT_TRUE(static_cast<bool>(
      parseStrictJson(R"([{"k": 1}, {"k": 2}, {"s": "\"k\""}])", "x.json")));
}

} // namespace
