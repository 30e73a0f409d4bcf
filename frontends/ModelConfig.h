//===- ModelConfig.h - DeepSeek-V2/V3 model configuration -------*- C++ -*-===//
//
// The architecture of a DeepSeek-V2/V3-style model, as config.json states
// it. The model builder turns a validated configuration into melt IR; the
// Hugging Face importer fills one from config.json.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_FRONTENDS_MODELCONFIG_H
#define MELT_FRONTENDS_MODELCONFIG_H

#include "llvm/Support/Error.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mlir::melt {

/// YaRN RoPE scaling (config.json "rope_scaling" with type "yarn").
struct YarnScaling {
  double factor = 1.0;
  int64_t originalMaxPositionEmbeddings = 4096;
  double betaFast = 32.0;
  double betaSlow = 1.0;
  double mscale = 1.0;
  double mscaleAllDim = 0.0;
};

/// How the checkpoint stores the weights of Linear layers.
enum class WeightFormat {
  BF16,
  F16,
  F32,
  /// float8_e4m3fn with 128x128 block scales (weight_scale_inv), as the
  /// DeepSeek-V3 checkpoint.
  FP8Block,
};

/// Field names follow config.json, so that messages can name them.
struct ModelConfig {
  std::string name;

  int64_t vocabSize = 0;              // vocab_size
  int64_t hiddenSize = 0;             // hidden_size
  int64_t intermediateSize = 0;       // intermediate_size (dense MLPs)
  int64_t moeIntermediateSize = 0;    // moe_intermediate_size
  int64_t numHiddenLayers = 0;        // num_hidden_layers
  int64_t firstKDenseReplace = 0;     // first_k_dense_replace
  int64_t moeLayerFreq = 1;           // moe_layer_freq
  int64_t numAttentionHeads = 0;      // num_attention_heads
  std::optional<int64_t> qLoraRank;   // q_lora_rank (null: no compression)
  int64_t kvLoraRank = 0;             // kv_lora_rank
  int64_t qkNopeHeadDim = 0;          // qk_nope_head_dim
  int64_t qkRopeHeadDim = 0;          // qk_rope_head_dim
  int64_t vHeadDim = 0;               // v_head_dim
  int64_t nRoutedExperts = 0;         // n_routed_experts (0: dense model)
  int64_t nSharedExperts = 0;         // n_shared_experts
  int64_t numExpertsPerTok = 0;       // num_experts_per_tok
  int64_t nGroup = 1;                 // n_group
  int64_t topkGroup = 1;              // topk_group
  double routedScalingFactor = 1.0;   // routed_scaling_factor
  std::string scoringFunc = "softmax"; // scoring_func: sigmoid | softmax
  std::string topkMethod = "greedy";  // topk_method
  bool normTopkProb = false;          // norm_topk_prob
  int64_t numNextnPredictLayers = 0;  // num_nextn_predict_layers (MTP)
  double rmsNormEps = 1e-6;           // rms_norm_eps
  double ropeTheta = 10000.0;         // rope_theta
  bool ropeInterleave = true;         // rope_interleave
  std::optional<YarnScaling> yarn;    // rope_scaling
  int64_t maxPositionEmbeddings = 4096; // max_position_embeddings
  bool tieWordEmbeddings = false;     // tie_word_embeddings
  WeightFormat weightFormat = WeightFormat::BF16;
  int64_t weightBlockSize = 128;      // quantization_config.weight_block_size

  int64_t qkHeadDim() const { return qkNopeHeadDim + qkRopeHeadDim; }
  bool isMoELayer(int64_t layer) const {
    return nRoutedExperts > 0 && layer >= firstKDenseReplace &&
           layer % moeLayerFreq == 0;
  }
  /// Softmax scale of attention: qk_head_dim^-0.5, times the squared YaRN
  /// mscale(factor, mscale_all_dim) when YaRN is on.
  double softmaxScale() const;
};

/// Checks ranges and cross-field consistency. The error names every field
/// that is wrong (config.json spelling), one per line.
llvm::Error validate(const ModelConfig &config);

/// The built-in configurations: tiny, mini, v2-lite, v2, v3, tiny-mla.
std::vector<std::string> builtinModelNames();
/// Looks up a built-in configuration; an error lists the known names.
llvm::Expected<ModelConfig> getBuiltinModel(llvm::StringRef name);

} // namespace mlir::melt

#endif // MELT_FRONTENDS_MODELCONFIG_H
