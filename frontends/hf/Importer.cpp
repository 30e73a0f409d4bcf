//===- Importer.cpp - Hugging Face checkpoint -> melt IR --------*- C++ -*-===//
#include "frontends/hf/Importer.h"

#include "dialects/melt/MeltDialect.h"
#include "frontends/ModelBuilder.h"
#include "frontends/hf/Checkpoint.h"
#include "frontends/hf/HFConfig.h"
#include "frontends/hf/StrictJson.h"

#include "mlir/IR/Builders.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"

#include <cmath>
#include <cstring>

using namespace mlir;
using namespace mlir::melt;

std::string mlir::melt::safetensorsDTypeOf(Type type) {
  if (type.isBF16())
    return "BF16";
  if (type.isF16())
    return "F16";
  if (type.isF32())
    return "F32";
  if (llvm::isa<Float8E4M3FNType>(type))
    return "F8_E4M3";
  return "";
}

namespace {

/// The MLIR type of a safetensors float dtype melt can compute with.
Type elementTypeOf(MLIRContext &ctx, llvm::StringRef dtype) {
  Builder b(&ctx);
  if (dtype == "BF16")
    return b.getBF16Type();
  if (dtype == "F16")
    return b.getF16Type();
  if (dtype == "F32")
    return b.getF32Type();
  return {};
}

std::string shapeString(llvm::ArrayRef<int64_t> shape) {
  std::string s = "[";
  for (auto [i, d] : llvm::enumerate(shape))
    s += (i ? ", " : "") + std::to_string(d);
  return s + "]";
}

/// Checks one checkpoint tensor against what the model expects of it.
class TensorChecker {
public:
  TensorChecker(const Checkpoint &ckpt, bool checkScales)
      : ckpt(ckpt), checkScales(checkScales) {}

  void expect(llvm::StringRef name, llvm::ArrayRef<int64_t> shape, Type type,
              bool isScale) {
    used.insert(name);
    const CheckpointTensor *t = ckpt.find(name);
    std::string dtype = safetensorsDTypeOf(type);
    if (!t) {
      problems.push_back(llvm::formatv("missing tensor '{0}' (expected {1} "
                                       "{2})",
                                       name, dtype, shapeString(shape)));
      return;
    }
    if (llvm::ArrayRef<int64_t>(t->shape) != shape || t->dtype != dtype) {
      problems.push_back(llvm::formatv(
          "{0}: tensor '{1}': expected {2} {3}, got {4} {5}", t->file, name,
          dtype, shapeString(shape), t->dtype, shapeString(t->shape)));
      return;
    }
    if (isScale && checkScales)
      checkScaleValues(name, *t);
  }

  /// Scales are read (they are ~0.02% of an FP8 checkpoint): a NaN or
  /// negative scale would silently poison every output.
  void checkScaleValues(llvm::StringRef name, const CheckpointTensor &t) {
    auto data = ckpt.readBytes(t);
    if (!data) {
      problems.push_back(llvm::formatv("{0}: tensor '{1}': cannot read: {2}",
                                       t.file, name,
                                       data.getError().message()));
      return;
    }
    const char *bytes = (*data)->getBufferStart();
    for (uint64_t i = 0; i < t.bytes / 4; ++i) {
      float v;
      std::memcpy(&v, bytes + 4 * i, 4); // safetensors is little-endian
      if (!std::isfinite(v) || v < 0.0f) {
        problems.push_back(llvm::formatv(
            "{0}: tensor '{1}': scale {2} is {3}; block scales must be finite "
            "and non-negative",
            t.file, name, i, v));
        return;
      }
    }
  }

  const Checkpoint &ckpt;
  bool checkScales;
  llvm::StringSet<> used;
  std::vector<std::string> problems;
};

/// Checks every source tensor (and scale tensor) of every weight.
void checkWeights(ModuleOp module, TensorChecker &checker) {
  for (auto weight : module.getOps<WeightOp>()) {
    auto check = [&](const SmallVector<SmallVector<int64_t>> &shapes,
                     Type element, ArrayAttr sources, bool isScale) {
      for (auto [a, shape] : llvm::zip(sources, shapes))
        checker.expect(llvm::cast<TensorSourceAttr>(a).getName(), shape,
                       element, isScale);
    };
    check(weight.getSourceShapes(), weight.getTensorType().getElementType(),
          weight.getSources(), false);
    if (weight.hasBlockScales())
      check(weight.getScaleSourceShapes(),
            llvm::cast<RankedTensorType>(*weight.getScaleType())
                .getElementType(),
            *weight.getScaleSources(), true);
  }
}

} // namespace

llvm::Expected<ImportResult>
mlir::melt::importCheckpoint(MLIRContext &context, llvm::StringRef directory,
                             const ImportOptions &options) {
  llvm::SmallString<256> configPath(directory);
  llvm::sys::path::append(configPath, "config.json");
  if (!llvm::sys::fs::exists(configPath))
    return fileError(directory, "has no config.json");
  llvm::Expected<ModelConfig> config = readHFConfig(configPath);
  if (!config)
    return config.takeError();
  llvm::Expected<Checkpoint> ckpt = Checkpoint::open(directory);
  if (!ckpt)
    return ckpt.takeError();

  ImportResult result;
  // transformers never saves the MTP layer; import without it then.
  if (config->numNextnPredictLayers > 0) {
    std::string mtpPrefix =
        llvm::formatv("model.layers.{0}.", config->numHiddenLayers);
    bool anyMtp = llvm::any_of(ckpt->all(), [&](const auto &entry) {
      return entry.first().starts_with(mtpPrefix);
    });
    if (!anyMtp) {
      result.warnings.push_back(llvm::formatv(
          "{0}: the checkpoint holds no MTP layer ({1}*) although "
          "num_nextn_predict_layers is {2}; importing without MTP",
          directory, mtpPrefix, config->numNextnPredictLayers));
      config->numNextnPredictLayers = 0;
    }
  }

  BuildOptions build;
  build.modelName = llvm::sys::path::filename(
                        llvm::sys::path::remove_leading_dotslash(directory))
                        .str();
  if (build.modelName.empty() || build.modelName == ".")
    build.modelName = config->name;
  build.fileOf = [&](llvm::StringRef name) -> std::string {
    const CheckpointTensor *t = ckpt->find(name);
    return t ? t->file : "";
  };
  build.elementTypeOf = [&](llvm::StringRef name) -> Type {
    const CheckpointTensor *t = ckpt->find(name);
    return t ? elementTypeOf(context, t->dtype) : Type();
  };
  llvm::Expected<OwningOpRef<ModuleOp>> module =
      buildModel(context, *config, build);
  if (!module)
    return module.takeError();

  TensorChecker checker(*ckpt, options.checkScales);
  checkWeights(**module, checker);
  if (!checker.problems.empty()) {
    std::string message = llvm::formatv(
        "{0}: {1} tensor(s) do not match the model of config.json:", directory,
        checker.problems.size());
    for (const std::string &p : checker.problems)
      message += "\n  " + p;
    return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
  }

  std::vector<std::string> unused;
  for (const auto &entry : ckpt->all())
    if (!checker.used.contains(entry.first()))
      unused.push_back(entry.first().str());
  if (!unused.empty()) {
    llvm::sort(unused);
    constexpr size_t kShown = 10;
    std::string names = llvm::join(
        llvm::ArrayRef(unused).take_front(kShown), ", ");
    if (unused.size() > kShown)
      names += llvm::formatv(", and {0} more", unused.size() - kShown);
    result.warnings.push_back(llvm::formatv(
        "{0}: {1} tensor(s) are not used by the model: {2}", directory,
        unused.size(), names));
  }
  result.module = std::move(*module);
  return result;
}
