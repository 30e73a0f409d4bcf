//===- ModelReport.cpp - parameters and cache bytes of a model --*- C++ -*-===//
#include "passes/PassReport.h"
#include "passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/JSON.h"

#include <map>

namespace mlir::melt {
#define GEN_PASS_DEF_MODELREPORTPASS
#include "passes/Passes.h.inc"
} // namespace mlir::melt

using namespace mlir;
using namespace mlir::melt;

namespace {

/// Bytes of one element; FP8 is 1, bf16 2, f32 4.
uint64_t elementBytes(Type type) {
  return (type.getIntOrFloatBitWidth() + 7) / 8;
}

std::string typeName(Type type) {
  std::string s;
  llvm::raw_string_ostream os(s);
  os << type;
  return s;
}

struct CacheSummary {
  int64_t layers = 0;
  /// Values and bytes per token, summed over all layers.
  int64_t valuesPerToken = 0;
  int64_t bytesPerToken = 0;
  /// Per-layer figures of the first cache seen (all layers agree in the
  /// models melt builds).
  int64_t valuesPerLayer = 0;
  int64_t bytesPerLayer = 0;
  std::string kind;
};

struct ModelSummary {
  int64_t weights = 0;
  int64_t parameters = 0;
  int64_t weightBytes = 0;
  int64_t scaleBytes = 0;
  std::map<std::string, int64_t> bytesByType;
  CacheSummary cache;
};

ModelSummary summarize(ModuleOp module) {
  ModelSummary s;
  llvm::StringSet<> seenScales;
  for (auto weight : module.getOps<WeightOp>()) {
    RankedTensorType type = weight.getTensorType();
    int64_t bytes = type.getNumElements() * elementBytes(type.getElementType());
    ++s.weights;
    s.parameters += type.getNumElements();
    s.weightBytes += bytes;
    s.bytesByType[typeName(type.getElementType())] += bytes;
    // Views of one tensor (W_UK, W_UV) share its scales: count them once.
    if (weight.hasBlockScales() &&
        seenScales.insert(llvm::cast<TensorSourceAttr>(
                              (*weight.getScaleSources())[0])
                              .getName())
            .second) {
      auto scales = llvm::cast<RankedTensorType>(*weight.getScaleType());
      s.scaleBytes += scales.getNumElements() * 4;
    }
  }
  // Caches are arguments of the model's functions; each layer has one.
  for (auto func : module.getOps<func::FuncOp>()) {
    for (Type arg : func.getArgumentTypes()) {
      int64_t values = 0, bytes = 0;
      if (auto kv = llvm::dyn_cast<KVCacheType>(arg)) {
        values = kv.getValuesPerToken();
        bytes = values * elementBytes(kv.getElementType());
        s.cache.kind = "per-head K/V";
      } else if (auto latent = llvm::dyn_cast<LatentCacheType>(arg)) {
        values = latent.getValuesPerToken();
        bytes = values * elementBytes(latent.getElementType());
        s.cache.kind = "latent";
      } else {
        continue;
      }
      if (s.cache.layers == 0) {
        s.cache.valuesPerLayer = values;
        s.cache.bytesPerLayer = bytes;
      }
      ++s.cache.layers;
      s.cache.valuesPerToken += values;
      s.cache.bytesPerToken += bytes;
    }
  }
  return s;
}

void printText(const ModelSummary &s, llvm::raw_ostream &os) {
  os << "melt model report\n";
  os << "  weights: " << s.weights << " symbols, " << s.parameters
     << " parameters\n";
  os << "  weight bytes: " << s.weightBytes << " (";
  llvm::interleaveComma(s.bytesByType, os, [&](const auto &entry) {
    os << entry.first << " " << entry.second;
  });
  os << "), block scales " << s.scaleBytes << "\n";
  if (s.cache.layers == 0) {
    os << "  kv cache: none\n";
    return;
  }
  os << "  kv cache: " << s.cache.kind << ", " << s.cache.layers
     << " layers, " << s.cache.valuesPerLayer << " values ("
     << s.cache.bytesPerLayer << " bytes) per token per layer, "
     << s.cache.bytesPerToken << " bytes per token\n";
}

llvm::json::Value toJson(const ModelSummary &s) {
  llvm::json::Object bytesByType;
  for (const auto &[type, bytes] : s.bytesByType)
    bytesByType[type] = bytes;
  return llvm::json::Object{
      {"weights", s.weights},
      {"parameters", s.parameters},
      {"weight_bytes", s.weightBytes},
      {"weight_bytes_by_type", std::move(bytesByType)},
      {"block_scale_bytes", s.scaleBytes},
      {"kv_cache",
       llvm::json::Object{{"kind", s.cache.kind},
                          {"layers", s.cache.layers},
                          {"values_per_token_per_layer",
                           s.cache.valuesPerLayer},
                          {"bytes_per_token_per_layer", s.cache.bytesPerLayer},
                          {"bytes_per_token", s.cache.bytesPerToken}}}};
}

struct ModelReportPass final
    : mlir::melt::impl::ModelReportPassBase<ModelReportPass> {
  using Base::Base;

  void runOnOperation() override {
    ModelSummary summary = summarize(getOperation());
    std::string text;
    llvm::raw_string_ostream os(text);
    if (json)
      os << llvm::formatv("{0:2}", toJson(summary)) << "\n";
    else
      printText(summary, os);

    if (failed(writePassReport(getOperation(), output, text,
                               "cannot write the model report")))
      signalPassFailure();
  }
};

} // namespace
