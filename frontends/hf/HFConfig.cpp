//===- HFConfig.cpp - config.json <-> ModelConfig ---------------*- C++ -*-===//
#include "frontends/hf/HFConfig.h"

#include "frontends/hf/StrictJson.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FormatVariadic.h"

using namespace mlir::melt;
using llvm::json::Object;
using llvm::json::Value;

namespace {

/// config.json files are small; anything larger is not one.
constexpr uint64_t kMaxConfigBytes = 16 << 20;

void readRopeScaling(JsonFields &top, const Object *scaling,
                     llvm::StringRef file, llvm::StringRef name,
                     ModelConfig &c) {
  JsonFields f(*scaling, file, (name + ".").str());
  // "type" in the original configs, "rope_type" in newer ones.
  std::string type = f.has("rope_type") ? f.string("rope_type")
                                        : f.string("type", "default");
  if (type == "default")
    return;
  if (type != "yarn") {
    f.problem(f.has("rope_type") ? "rope_type" : "type",
              llvm::formatv("unsupported RoPE scaling \"{0}\" (melt supports "
                            "\"yarn\" and \"default\")",
                            type));
    top.absorb(f);
    return;
  }
  YarnScaling y;
  y.factor = f.number("factor");
  y.originalMaxPositionEmbeddings =
      f.integer("original_max_position_embeddings");
  y.betaFast = f.number("beta_fast", 32.0);
  y.betaSlow = f.number("beta_slow", 1.0);
  y.mscale = f.number("mscale", 1.0);
  y.mscaleAllDim = f.number("mscale_all_dim", 0.0);
  c.yarn = y;
  top.absorb(f);
}

void readQuantization(JsonFields &top, const Object &q, llvm::StringRef file,
                      ModelConfig &c) {
  JsonFields f(q, file, "quantization_config.");
  std::string method = f.string("quant_method");
  if (f.ok() && method != "fp8")
    f.problem("quant_method",
              llvm::formatv("unsupported quantization \"{0}\" (melt reads "
                            "\"fp8\" block-scaled checkpoints)",
                            method));
  std::string fmt = f.string("fmt", "e4m3");
  if (fmt != "e4m3")
    f.problem("fmt", llvm::formatv("unsupported FP8 format \"{0}\" (expected "
                                   "\"e4m3\")",
                                   fmt));
  std::string scheme = f.string("activation_scheme", "dynamic");
  if (scheme != "dynamic")
    f.problem("activation_scheme",
              llvm::formatv("unsupported activation scheme \"{0}\" (expected "
                            "\"dynamic\")",
                            scheme));
  const Value *block = q.get("weight_block_size");
  const llvm::json::Array *sizes = block ? block->getAsArray() : nullptr;
  if (!sizes || sizes->size() != 2 || !(*sizes)[0].getAsInteger() ||
      !(*sizes)[1].getAsInteger()) {
    f.problem("weight_block_size", "must be an array of two integers");
  } else if (*(*sizes)[0].getAsInteger() != 128 ||
             *(*sizes)[1].getAsInteger() != 128) {
    f.problem("weight_block_size",
              llvm::formatv("unsupported block [{0}, {1}] (melt reads [128, "
                            "128])",
                            *(*sizes)[0].getAsInteger(),
                            *(*sizes)[1].getAsInteger()));
  }
  c.weightFormat = WeightFormat::FP8Block;
  c.weightBlockSize = 128;
  top.absorb(f);
}

} // namespace

llvm::Expected<ModelConfig> mlir::melt::parseHFConfig(const Value &json,
                                                      llvm::StringRef file) {
  const Object *object = json.getAsObject();
  if (!object)
    return fileError(file, "must hold a JSON object");
  JsonFields f(*object, file);
  ModelConfig c;

  std::string modelType = f.string("model_type");
  if (f.ok() && modelType != "deepseek_v3" && modelType != "deepseek_v2")
    f.problem("model_type",
              llvm::formatv("unsupported model type \"{0}\" (melt reads "
                            "\"deepseek_v3\" and \"deepseek_v2\")",
                            modelType));
  c.name = modelType;

  c.vocabSize = f.integer("vocab_size");
  c.hiddenSize = f.integer("hidden_size");
  c.numHiddenLayers = f.integer("num_hidden_layers");
  c.numAttentionHeads = f.integer("num_attention_heads");
  c.kvLoraRank = f.integer("kv_lora_rank");
  c.qkNopeHeadDim = f.integer("qk_nope_head_dim");
  c.qkRopeHeadDim = f.integer("qk_rope_head_dim");
  c.vHeadDim = f.integer("v_head_dim");
  if (!f.has("q_lora_rank"))
    f.problem("q_lora_rank", "required field is missing (null means no "
                             "query compression)");
  else
    c.qLoraRank = f.nullableInteger("q_lora_rank");

  // MoE. V2-style configs may leave n_routed_experts null for dense models.
  c.nRoutedExperts = f.integer("n_routed_experts", 0);
  c.firstKDenseReplace = f.integer("first_k_dense_replace", 0);
  c.moeLayerFreq = f.integer("moe_layer_freq", 1);
  c.intermediateSize = f.integer("intermediate_size", 0);
  if (c.nRoutedExperts > 0) {
    c.moeIntermediateSize = f.integer("moe_intermediate_size");
    c.numExpertsPerTok = f.integer("num_experts_per_tok");
    c.nSharedExperts = f.integer("n_shared_experts", 0);
    c.nGroup = f.integer("n_group", 1);
    c.topkGroup = f.integer("topk_group", 1);
    c.routedScalingFactor = f.number("routed_scaling_factor", 1.0);
    // transformers' DeepseekV3 config has neither field: its model always
    // routes with sigmoid scores and the correction bias.
    bool v3 = modelType == "deepseek_v3";
    c.scoringFunc = f.string("scoring_func", v3 ? "sigmoid" : "softmax");
    c.topkMethod = f.string("topk_method", v3 ? "noaux_tc" : "greedy");
    c.normTopkProb = f.boolean("norm_topk_prob", false);
  }
  c.numNextnPredictLayers = f.integer("num_nextn_predict_layers", 0);
  c.rmsNormEps = f.number("rms_norm_eps", 1e-6);
  c.maxPositionEmbeddings = f.integer("max_position_embeddings", 4096);
  c.tieWordEmbeddings = f.boolean("tie_word_embeddings", false);
  c.ropeInterleave = f.boolean("rope_interleave", true);

  std::string act = f.string("hidden_act", "silu");
  if (act != "silu")
    f.problem("hidden_act", llvm::formatv("unsupported activation \"{0}\" "
                                          "(DeepSeek models use \"silu\")",
                                          act));

  if (f.boolean("attention_bias", false))
    f.problem("attention_bias", "biased attention projections are not "
                                "supported (DeepSeek models have none)");
  // MLA has as many key/value heads as query heads.
  if (f.has("num_key_value_heads") && !f.isNull("num_key_value_heads")) {
    int64_t kvHeads = f.integer("num_key_value_heads");
    if (f.ok() && kvHeads != c.numAttentionHeads)
      f.problem("num_key_value_heads",
                llvm::formatv("({0}) must equal num_attention_heads ({1}) in "
                              "multi-head latent attention",
                              kvHeads, c.numAttentionHeads));
  }
  // transformers 5 writes the derived head sizes; they must agree.
  if (f.has("qk_head_dim") && !f.isNull("qk_head_dim")) {
    int64_t qkHeadDim = f.integer("qk_head_dim");
    if (f.ok() && qkHeadDim != c.qkHeadDim())
      f.problem("qk_head_dim",
                llvm::formatv("({0}) must equal qk_nope_head_dim + "
                              "qk_rope_head_dim ({1})",
                              qkHeadDim, c.qkHeadDim()));
  }
  if (f.has("head_dim") && !f.isNull("head_dim")) {
    int64_t headDim = f.integer("head_dim");
    if (f.ok() && headDim != c.qkRopeHeadDim && headDim != c.qkHeadDim())
      f.problem("head_dim",
                llvm::formatv("({0}) must equal qk_rope_head_dim ({1}) or "
                              "qk_nope_head_dim + qk_rope_head_dim ({2})",
                              headDim, c.qkRopeHeadDim, c.qkHeadDim()));
  }

  // RoPE: rope_theta + rope_scaling (original) or rope_parameters (v5).
  if (const Object *params = object->getObject("rope_parameters")) {
    JsonFields p(*params, file, "rope_parameters.");
    c.ropeTheta = p.number("rope_theta", 10000.0);
    f.absorb(p);
    readRopeScaling(f, params, file, "rope_parameters", c);
  } else {
    if (f.has("rope_parameters") && !f.isNull("rope_parameters"))
      f.problem("rope_parameters", "must be an object");
    c.ropeTheta = f.number("rope_theta", 10000.0);
    if (const Object *scaling = object->getObject("rope_scaling"))
      readRopeScaling(f, scaling, file, "rope_scaling", c);
    else if (!f.isNull("rope_scaling"))
      f.problem("rope_scaling", "must be an object or null");
  }

  // Storage: FP8 block-scaled when quantized, else the declared dtype.
  std::string dtype = f.has("torch_dtype") ? f.string("torch_dtype")
                                           : f.string("dtype", "bfloat16");
  if (dtype == "bfloat16")
    c.weightFormat = WeightFormat::BF16;
  else if (dtype == "float16")
    c.weightFormat = WeightFormat::F16;
  else if (dtype == "float32")
    c.weightFormat = WeightFormat::F32;
  else
    f.problem(f.has("torch_dtype") ? "torch_dtype" : "dtype",
              llvm::formatv("unsupported dtype \"{0}\" (expected \"bfloat16\", "
                            "\"float16\" or \"float32\")",
                            dtype));
  if (const Object *q = object->getObject("quantization_config"))
    readQuantization(f, *q, file, c);
  else if (!f.isNull("quantization_config"))
    f.problem("quantization_config", "must be an object");

  if (llvm::Error error = f.takeError())
    return std::move(error);
  // Ranges and cross-field consistency, with config.json's field names.
  if (llvm::Error error = validate(c)) {
    std::string problems = llvm::toString(std::move(error)), lines;
    for (llvm::StringRef line : llvm::split(problems, '\n'))
      lines += (lines.empty() ? "" : "\n") + (file + ": " + line).str();
    return llvm::createStringError(llvm::inconvertibleErrorCode(), lines);
  }
  return c;
}

llvm::Expected<ModelConfig> mlir::melt::readHFConfig(llvm::StringRef path) {
  llvm::Expected<Value> json = readStrictJsonFile(path, kMaxConfigBytes);
  if (!json)
    return json.takeError();
  return parseHFConfig(*json, path);
}

Value mlir::melt::toHFConfig(const ModelConfig &c) {
  Object o{
      {"architectures", llvm::json::Array{"DeepseekV3ForCausalLM"}},
      {"model_type", "deepseek_v3"},
      {"vocab_size", c.vocabSize},
      {"hidden_size", c.hiddenSize},
      {"intermediate_size", c.intermediateSize},
      {"moe_intermediate_size", c.moeIntermediateSize},
      {"num_hidden_layers", c.numHiddenLayers},
      {"first_k_dense_replace", c.firstKDenseReplace},
      {"moe_layer_freq", c.moeLayerFreq},
      {"num_attention_heads", c.numAttentionHeads},
      {"num_key_value_heads", c.numAttentionHeads},
      {"q_lora_rank", c.qLoraRank ? Value(*c.qLoraRank) : Value(nullptr)},
      {"kv_lora_rank", c.kvLoraRank},
      {"qk_nope_head_dim", c.qkNopeHeadDim},
      {"qk_rope_head_dim", c.qkRopeHeadDim},
      {"v_head_dim", c.vHeadDim},
      {"n_routed_experts", c.nRoutedExperts},
      {"n_shared_experts", c.nSharedExperts},
      {"num_experts_per_tok", c.numExpertsPerTok},
      {"n_group", c.nGroup},
      {"topk_group", c.topkGroup},
      {"routed_scaling_factor", c.routedScalingFactor},
      {"scoring_func", c.scoringFunc},
      {"topk_method", c.topkMethod},
      {"norm_topk_prob", c.normTopkProb},
      {"num_nextn_predict_layers", c.numNextnPredictLayers},
      {"rms_norm_eps", c.rmsNormEps},
      {"rope_theta", c.ropeTheta},
      {"rope_interleave", c.ropeInterleave},
      {"max_position_embeddings", c.maxPositionEmbeddings},
      {"tie_word_embeddings", c.tieWordEmbeddings},
      {"hidden_act", "silu"},
      {"torch_dtype", c.weightFormat == WeightFormat::F16   ? "float16"
                      : c.weightFormat == WeightFormat::F32 ? "float32"
                                                            : "bfloat16"},
  };
  if (c.yarn)
    o["rope_scaling"] = Object{
        {"type", "yarn"},
        {"factor", c.yarn->factor},
        {"original_max_position_embeddings",
         c.yarn->originalMaxPositionEmbeddings},
        {"beta_fast", c.yarn->betaFast},
        {"beta_slow", c.yarn->betaSlow},
        {"mscale", c.yarn->mscale},
        {"mscale_all_dim", c.yarn->mscaleAllDim},
    };
  else
    o["rope_scaling"] = nullptr;
  if (c.weightFormat == WeightFormat::FP8Block)
    o["quantization_config"] = Object{
        {"quant_method", "fp8"},
        {"fmt", "e4m3"},
        {"activation_scheme", "dynamic"},
        {"weight_block_size", llvm::json::Array{c.weightBlockSize,
                                                c.weightBlockSize}},
    };
  return o;
}
