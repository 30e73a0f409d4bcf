//===- ModelConfig.cpp - validation of model configurations -----*- C++ -*-===//
#include "frontends/ModelConfig.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FormatVariadic.h"

#include <cmath>

using namespace mlir::melt;

double ModelConfig::softmaxScale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qkHeadDim()));
  if (yarn && yarn->mscaleAllDim != 0.0 && yarn->factor > 1.0) {
    double m = 0.1 * yarn->mscaleAllDim * std::log(yarn->factor) + 1.0;
    scale *= m * m;
  }
  return scale;
}

namespace {

/// Collects every problem of a configuration before reporting, so that a
/// user fixes config.json in one go.
class Problems {
public:
  void add(llvm::StringRef field, const llvm::Twine &message) {
    lines.push_back(("'" + field + "': " + message).str());
  }
  void positive(llvm::StringRef field, int64_t value) {
    if (value <= 0)
      add(field, llvm::formatv("must be positive, got {0}", value));
  }
  void nonNegative(llvm::StringRef field, int64_t value) {
    if (value < 0)
      add(field, llvm::formatv("must be non-negative, got {0}", value));
  }
  void positive(llvm::StringRef field, double value) {
    if (!(value > 0.0) || !std::isfinite(value))
      add(field, llvm::formatv("must be a positive finite number, got {0}",
                               value));
  }
  llvm::Error take() {
    if (lines.empty())
      return llvm::Error::success();
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   llvm::join(lines, "\n"));
  }

private:
  std::vector<std::string> lines;
};

} // namespace

llvm::Error mlir::melt::validate(const ModelConfig &c) {
  Problems p;
  p.positive("vocab_size", c.vocabSize);
  p.positive("hidden_size", c.hiddenSize);
  p.positive("num_hidden_layers", c.numHiddenLayers);
  p.positive("num_attention_heads", c.numAttentionHeads);
  p.positive("kv_lora_rank", c.kvLoraRank);
  p.positive("qk_nope_head_dim", c.qkNopeHeadDim);
  p.positive("qk_rope_head_dim", c.qkRopeHeadDim);
  p.positive("v_head_dim", c.vHeadDim);
  p.positive("rms_norm_eps", c.rmsNormEps);
  p.positive("rope_theta", c.ropeTheta);
  p.positive("max_position_embeddings", c.maxPositionEmbeddings);
  p.nonNegative("first_k_dense_replace", c.firstKDenseReplace);
  p.nonNegative("n_routed_experts", c.nRoutedExperts);
  p.nonNegative("n_shared_experts", c.nSharedExperts);
  p.nonNegative("num_nextn_predict_layers", c.numNextnPredictLayers);
  p.positive("moe_layer_freq", c.moeLayerFreq);

  if (c.qLoraRank && *c.qLoraRank <= 0)
    p.add("q_lora_rank",
          llvm::formatv("must be positive or null, got {0}", *c.qLoraRank));
  if (c.qkRopeHeadDim > 0 && c.qkRopeHeadDim % 2 != 0)
    p.add("qk_rope_head_dim",
          llvm::formatv("must be even (RoPE rotates pairs), got {0}",
                        c.qkRopeHeadDim));
  if (c.firstKDenseReplace > c.numHiddenLayers && c.numHiddenLayers > 0)
    p.add("first_k_dense_replace",
          llvm::formatv("({0}) exceeds num_hidden_layers ({1})",
                        c.firstKDenseReplace, c.numHiddenLayers));

  // Dense layers exist when some layer is not MoE.
  bool hasDense = c.nRoutedExperts == 0 || c.firstKDenseReplace > 0 ||
                  c.moeLayerFreq > 1;
  if (hasDense)
    p.positive("intermediate_size", c.intermediateSize);

  if (c.nRoutedExperts > 0) {
    p.positive("moe_intermediate_size", c.moeIntermediateSize);
    p.positive("num_experts_per_tok", c.numExpertsPerTok);
    p.positive("n_group", c.nGroup);
    p.positive("topk_group", c.topkGroup);
    p.positive("routed_scaling_factor", c.routedScalingFactor);
    if (c.numExpertsPerTok > c.nRoutedExperts)
      p.add("num_experts_per_tok",
            llvm::formatv("({0}) exceeds n_routed_experts ({1})",
                          c.numExpertsPerTok, c.nRoutedExperts));
    if (c.nGroup > 0 && c.nRoutedExperts % c.nGroup != 0)
      p.add("n_group", llvm::formatv("({0}) does not divide n_routed_experts "
                                     "({1})",
                                     c.nGroup, c.nRoutedExperts));
    if (c.topkGroup > c.nGroup)
      p.add("topk_group", llvm::formatv("({0}) exceeds n_group ({1})",
                                        c.topkGroup, c.nGroup));
    if (c.scoringFunc != "sigmoid" && c.scoringFunc != "softmax")
      p.add("scoring_func",
            llvm::formatv("unsupported value \"{0}\" (expected \"sigmoid\" or "
                          "\"softmax\")",
                          c.scoringFunc));
    if (c.topkMethod != "greedy" && c.topkMethod != "group_limited_greedy" &&
        c.topkMethod != "noaux_tc")
      p.add("topk_method",
            llvm::formatv("unsupported value \"{0}\" (expected \"greedy\", "
                          "\"group_limited_greedy\" or \"noaux_tc\")",
                          c.topkMethod));
    bool grouped = c.topkMethod != "greedy";
    if (grouped && c.nGroup > 0 && c.topkGroup > 0 &&
        c.nRoutedExperts % c.nGroup == 0 &&
        c.numExpertsPerTok > c.topkGroup * (c.nRoutedExperts / c.nGroup))
      p.add("num_experts_per_tok",
            llvm::formatv("({0}) exceeds the {1} experts of the topk_group "
                          "({2}) groups kept by {3} routing",
                          c.numExpertsPerTok,
                          c.topkGroup * (c.nRoutedExperts / c.nGroup),
                          c.topkGroup, c.topkMethod));
  }

  if (c.yarn) {
    const YarnScaling &y = *c.yarn;
    if (!(y.factor >= 1.0))
      p.add("rope_scaling.factor",
            llvm::formatv("must be >= 1, got {0}", y.factor));
    if (y.originalMaxPositionEmbeddings <= 0)
      p.add("rope_scaling.original_max_position_embeddings",
            llvm::formatv("must be positive, got {0}",
                          y.originalMaxPositionEmbeddings));
    if (!(y.betaSlow > 0.0) || !(y.betaFast > y.betaSlow))
      p.add("rope_scaling.beta_fast",
            llvm::formatv("needs beta_fast > beta_slow > 0, got {0} and {1}",
                          y.betaFast, y.betaSlow));
    if (!(y.mscale >= 0.0) || !(y.mscaleAllDim >= 0.0))
      p.add("rope_scaling.mscale", "mscale and mscale_all_dim must be >= 0");
  }
  if (c.weightFormat == WeightFormat::FP8Block && c.weightBlockSize != 128)
    p.add("quantization_config.weight_block_size",
          llvm::formatv("only [128, 128] is supported, got {0}",
                        c.weightBlockSize));
  return p.take();
}
