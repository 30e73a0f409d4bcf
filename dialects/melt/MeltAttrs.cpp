//===- MeltAttrs.cpp - verification of melt attributes ----------*- C++ -*-===//
#include "dialects/melt/MeltDialect.h"

#include <cmath>

using namespace mlir;
using namespace mlir::melt;

FailureOr<llvm::APFloat> mlir::melt::parseF64(AsmParser &parser) {
  double value;
  if (parser.parseFloat(value))
    return failure();
  return llvm::APFloat(value);
}

//===----------------------------------------------------------------------===//
// TensorSourceAttr
//===----------------------------------------------------------------------===//

LogicalResult
TensorSourceAttr::verify(function_ref<InFlightDiagnostic()> emitError,
                         StringRef name, StringRef file) {
  if (name.empty())
    return emitError() << "checkpoint tensor name must not be empty";
  // A shard path is relative to the checkpoint directory and stays inside it.
  if (file.starts_with("/") || file == ".." || file.starts_with("../") ||
      file.contains("/../") || file.ends_with("/.."))
    return emitError() << "shard file '" << file
                       << "' must be a path inside the checkpoint directory";
  return success();
}

//===----------------------------------------------------------------------===//
// WeightViewAttr
//===----------------------------------------------------------------------===//

LogicalResult
WeightViewAttr::verify(function_ref<InFlightDiagnostic()> emitError,
                       ArrayRef<int64_t> source, ArrayRef<int64_t> shape,
                       int64_t axis, int64_t offset) {
  auto count = [](ArrayRef<int64_t> dims) {
    int64_t n = 1;
    for (int64_t d : dims)
      n = d < 0 ? -1 : (n < 0 ? -1 : n * d);
    return n;
  };
  if (source.empty() || shape.empty() || count(source) < 0 ||
      count(shape) < 0 || count(source) != count(shape))
    return emitError() << "weight view reshapes " << count(source)
                       << " elements into " << count(shape);
  if (axis < 0 || axis >= static_cast<int64_t>(shape.size()))
    return emitError() << "weight view axis " << axis
                       << " is out of range for rank " << shape.size();
  if (offset < 0 || offset >= shape[axis])
    return emitError() << "weight view offset " << offset
                       << " is outside dimension " << axis << " of size "
                       << shape[axis];
  return success();
}

//===----------------------------------------------------------------------===//
// YarnAttr
//===----------------------------------------------------------------------===//

LogicalResult YarnAttr::verify(function_ref<InFlightDiagnostic()> emitError,
                               llvm::APFloat factorValue,
                               int64_t originalMaxPosition,
                               llvm::APFloat betaFastValue,
                               llvm::APFloat betaSlowValue,
                               llvm::APFloat mscaleValue,
                               llvm::APFloat mscaleAllDimValue) {
  double factor = factorValue.convertToDouble(),
         betaFast = betaFastValue.convertToDouble(),
         betaSlow = betaSlowValue.convertToDouble(),
         mscale = mscaleValue.convertToDouble(),
         mscaleAllDim = mscaleAllDimValue.convertToDouble();
  if (!(factor >= 1.0))
    return emitError() << "yarn factor must be >= 1, got " << factor;
  if (originalMaxPosition <= 0)
    return emitError() << "yarn original_max_position must be positive, got "
                       << originalMaxPosition;
  if (!(betaSlow > 0.0) || !(betaFast > betaSlow))
    return emitError() << "yarn needs beta_fast > beta_slow > 0, got beta_fast "
                       << betaFast << " and beta_slow " << betaSlow;
  if (!std::isfinite(mscale) || !std::isfinite(mscaleAllDim) || mscale < 0 ||
      mscaleAllDim < 0)
    return emitError() << "yarn mscale and mscale_all_dim must be finite and "
                          "non-negative";
  return success();
}

double YarnAttr::attentionFactor(double factor, double mscale) {
  if (factor <= 1.0)
    return 1.0;
  return 0.1 * mscale * std::log(factor) + 1.0;
}

double YarnAttr::softmaxScaleMultiplier() const {
  double m = attentionFactor(getFactor().convertToDouble(),
                             getMscaleAllDim().convertToDouble());
  return m * m;
}

//===----------------------------------------------------------------------===//
// PrecisionAttr
//===----------------------------------------------------------------------===//

/// Bit width used to order precisions; 0 for types melt does not compute in.
static unsigned precisionWidth(Type type) {
  if (isFp8Type(type))
    return 8;
  if (llvm::isa<BFloat16Type, Float16Type>(type))
    return 16;
  if (llvm::isa<Float32Type>(type))
    return 32;
  return 0;
}

static LogicalResult verifyBlock(function_ref<InFlightDiagnostic()> emitError,
                                 StringRef name, ArrayRef<int64_t> block) {
  if (block.empty())
    return success();
  if (block.size() != 2)
    return emitError() << name << " must have 2 sizes, got " << block.size();
  if (block[0] <= 0 || block[1] <= 0)
    return emitError() << name << " sizes must be positive";
  return success();
}

LogicalResult
PrecisionAttr::verify(function_ref<InFlightDiagnostic()> emitError,
                      Type compute, Type accumulate, Type output,
                      ArrayRef<int64_t> actBlock,
                      ArrayRef<int64_t> weightBlock) {
  for (auto [name, type] : {std::pair<StringRef, Type>{"compute", compute},
                            {"accumulate", accumulate},
                            {"output", output}})
    if (precisionWidth(type) == 0)
      return emitError() << "precision " << name << " type " << type
                         << " is not one of f8E4M3FN, f8E4M3FNUZ, bf16, f16, "
                            "f32";
  if (isFp8Type(accumulate))
    return emitError() << "precision cannot accumulate in " << accumulate;
  if (precisionWidth(accumulate) < precisionWidth(compute))
    return emitError() << "precision accumulates in " << accumulate
                       << ", narrower than its compute type " << compute;
  if (failed(verifyBlock(emitError, "act_block", actBlock)) ||
      failed(verifyBlock(emitError, "weight_block", weightBlock)))
    return failure();
  if (isFp8Type(compute) && (actBlock.empty() || weightBlock.empty()))
    return emitError() << "FP8 compute needs act_block and weight_block scale "
                          "geometry";
  return success();
}

//===----------------------------------------------------------------------===//
// ExpertPlacementAttr
//===----------------------------------------------------------------------===//

LogicalResult
ExpertPlacementAttr::verify(function_ref<InFlightDiagnostic()> emitError,
                            int64_t devices, ArrayRef<int64_t> slots,
                            ArrayRef<int64_t> load) {
  if (devices <= 0)
    return emitError() << "expert placement needs at least one device, got "
                       << devices;
  if (slots.empty() || slots.size() % devices != 0)
    return emitError() << "expert placement has " << slots.size()
                       << " slots, not a positive multiple of " << devices
                       << " devices";
  for (auto [i, expert] : llvm::enumerate(slots))
    if (expert < 0)
      return emitError() << "expert placement slot " << i
                         << " holds negative expert id " << expert;
  if (!load.empty()) {
    if (static_cast<int64_t>(load.size()) != devices)
      return emitError() << "expert placement has " << load.size()
                         << " load entries for " << devices << " devices";
    for (auto [i, l] : llvm::enumerate(load))
      if (l < 0)
        return emitError() << "expert placement load of device " << i
                           << " must be non-negative, got " << l;
  }
  return success();
}

LogicalResult ExpertPlacementAttr::verifyForExperts(
    function_ref<InFlightDiagnostic()> emitError, int64_t numExperts) const {
  llvm::SmallVector<bool> placed(numExperts, false);
  for (auto [i, expert] : llvm::enumerate(getSlots())) {
    if (expert >= numExperts)
      return emitError() << "expert placement slot " << i << " holds expert "
                         << expert << " of " << numExperts;
    placed[expert] = true;
  }
  for (auto [expert, isPlaced] : llvm::enumerate(placed))
    if (!isPlaced)
      return emitError() << "expert placement places no replica of expert "
                         << expert;
  return success();
}
