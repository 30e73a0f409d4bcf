//===- BuiltinModels.cpp - the built-in model configurations ----*- C++ -*-===//
//
// Shapes of the public DeepSeek checkpoints, plus `tiny` (runs in seconds on
// a CPU, exercises every feature) and `mini` (the benchmark model of
// shared/bench/BASELINES.md).
//
//===----------------------------------------------------------------------===//
#include "frontends/ModelConfig.h"

#include "llvm/ADT/StringExtras.h"

using namespace mlir::melt;

namespace {

/// DeepSeek-V3 (671B + 14B MTP), as its config.json states it.
ModelConfig makeV3() {
  ModelConfig c;
  c.name = "v3";
  c.vocabSize = 129280;
  c.hiddenSize = 7168;
  c.intermediateSize = 18432;
  c.moeIntermediateSize = 2048;
  c.numHiddenLayers = 61;
  c.firstKDenseReplace = 3;
  c.numAttentionHeads = 128;
  c.qLoraRank = 1536;
  c.kvLoraRank = 512;
  c.qkNopeHeadDim = 128;
  c.qkRopeHeadDim = 64;
  c.vHeadDim = 128;
  c.nRoutedExperts = 256;
  c.nSharedExperts = 1;
  c.numExpertsPerTok = 8;
  c.nGroup = 8;
  c.topkGroup = 4;
  c.routedScalingFactor = 2.5;
  c.scoringFunc = "sigmoid";
  c.topkMethod = "noaux_tc";
  c.normTopkProb = true;
  c.numNextnPredictLayers = 1;
  c.rmsNormEps = 1e-6;
  c.ropeTheta = 10000.0;
  c.yarn = YarnScaling{40.0, 4096, 32.0, 1.0, 1.0, 1.0};
  c.maxPositionEmbeddings = 163840;
  c.weightFormat = WeightFormat::FP8Block;
  return c;
}

/// The benchmark model: V3's attention and routing, 8 layers, 64 experts.
ModelConfig makeMini() {
  ModelConfig c = makeV3();
  c.name = "mini";
  c.hiddenSize = 2048;
  c.intermediateSize = 10944;
  c.moeIntermediateSize = 1408;
  c.numHiddenLayers = 8;
  c.firstKDenseReplace = 1;
  c.numAttentionHeads = 16;
  c.nRoutedExperts = 64;
  c.numExpertsPerTok = 6;
  c.numNextnPredictLayers = 0;
  c.yarn.reset();
  c.maxPositionEmbeddings = 4096;
  c.weightFormat = WeightFormat::BF16;
  return c;
}

/// DeepSeek-V2 (236B).
ModelConfig makeV2() {
  ModelConfig c;
  c.name = "v2";
  c.vocabSize = 102400;
  c.hiddenSize = 5120;
  c.intermediateSize = 12288;
  c.moeIntermediateSize = 1536;
  c.numHiddenLayers = 60;
  c.firstKDenseReplace = 1;
  c.numAttentionHeads = 128;
  c.qLoraRank = 1536;
  c.kvLoraRank = 512;
  c.qkNopeHeadDim = 128;
  c.qkRopeHeadDim = 64;
  c.vHeadDim = 128;
  c.nRoutedExperts = 160;
  c.nSharedExperts = 2;
  c.numExpertsPerTok = 6;
  c.nGroup = 8;
  c.topkGroup = 3;
  c.routedScalingFactor = 16.0;
  c.scoringFunc = "softmax";
  c.topkMethod = "group_limited_greedy";
  c.normTopkProb = false;
  c.rmsNormEps = 1e-6;
  c.yarn = YarnScaling{40.0, 4096, 32.0, 1.0, 0.707, 0.707};
  c.maxPositionEmbeddings = 163840;
  return c;
}

/// DeepSeek-V2-Lite (16B): no query compression, greedy softmax routing.
ModelConfig makeV2Lite() {
  ModelConfig c = makeV2();
  c.name = "v2-lite";
  c.hiddenSize = 2048;
  c.intermediateSize = 10944;
  c.moeIntermediateSize = 1408;
  c.numHiddenLayers = 27;
  c.numAttentionHeads = 16;
  c.qLoraRank.reset();
  c.nRoutedExperts = 64;
  c.nSharedExperts = 2;
  c.numExpertsPerTok = 6;
  c.nGroup = 1;
  c.topkGroup = 1;
  c.routedScalingFactor = 1.0;
  c.topkMethod = "greedy";
  return c;
}

/// Seconds on a CPU, yet every feature: query compression, YaRN, 2 MoE
/// layers of 8 experts in 4 groups with noaux_tc routing, shared expert, MTP.
ModelConfig makeTiny() {
  ModelConfig c;
  c.name = "tiny";
  c.vocabSize = 512;
  c.hiddenSize = 128;
  c.intermediateSize = 256;
  c.moeIntermediateSize = 64;
  c.numHiddenLayers = 3;
  c.firstKDenseReplace = 1;
  c.numAttentionHeads = 4;
  c.qLoraRank = 64;
  c.kvLoraRank = 32;
  c.qkNopeHeadDim = 16;
  c.qkRopeHeadDim = 8;
  c.vHeadDim = 16;
  c.nRoutedExperts = 8;
  c.nSharedExperts = 1;
  c.numExpertsPerTok = 2;
  c.nGroup = 4;
  c.topkGroup = 2;
  c.routedScalingFactor = 2.5;
  c.scoringFunc = "sigmoid";
  c.topkMethod = "noaux_tc";
  c.normTopkProb = true;
  c.numNextnPredictLayers = 1;
  c.rmsNormEps = 1e-6;
  c.yarn = YarnScaling{4.0, 128, 32.0, 1.0, 1.0, 1.0};
  c.maxPositionEmbeddings = 512;
  return c;
}

/// tiny at DeepSeek's MLA dims where the GPU kernels key on them (latent
/// 512, rope 64, heads in 16s): melt-compile --target=cuda puts its
/// attention on tensor cores, so that the CUDA device's MLA decode kernel
/// and BF16 latent cache run on a model small enough to check against the
/// CPU in seconds.
ModelConfig makeTinyMla() {
  ModelConfig c = makeTiny();
  c.name = "tiny-mla";
  c.numAttentionHeads = 16;
  c.kvLoraRank = 512;
  c.qkRopeHeadDim = 64;
  return c;
}

struct Builtin {
  const char *name;
  ModelConfig (*make)();
};

const Builtin kBuiltins[] = {
    {"tiny", makeTiny}, {"mini", makeMini}, {"v2-lite", makeV2Lite},
    {"v2", makeV2},     {"v3", makeV3},     {"tiny-mla", makeTinyMla},
};

} // namespace

std::vector<std::string> mlir::melt::builtinModelNames() {
  std::vector<std::string> names;
  for (const Builtin &b : kBuiltins)
    names.push_back(b.name);
  return names;
}

llvm::Expected<ModelConfig> mlir::melt::getBuiltinModel(llvm::StringRef name) {
  for (const Builtin &b : kBuiltins)
    if (name == b.name)
      return b.make();
  return llvm::createStringError(
      llvm::inconvertibleErrorCode(),
      "unknown built-in model '" + name.str() + "' (known: " +
          llvm::join(builtinModelNames(), ", ") + ")");
}
