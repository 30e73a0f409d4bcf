//===- MeltTypes.cpp - verification of melt types ---------------*- C++ -*-===//
#include "dialects/melt/MeltDialect.h"

using namespace mlir;
using namespace mlir::melt;

static LogicalResult
verifyCacheElementType(function_ref<InFlightDiagnostic()> emitError,
                       Type elementType) {
  if (!llvm::isa<BFloat16Type, Float16Type, Float32Type>(elementType) &&
      !isFp8Type(elementType))
    return emitError() << "cache element type must be bf16, f16, f32 or an "
                          "FP8 type, got "
                       << elementType;
  return success();
}

LogicalResult KVCacheType::verify(function_ref<InFlightDiagnostic()> emitError,
                                  int64_t heads, int64_t keyDim,
                                  int64_t valueDim, Type elementType) {
  if (heads <= 0 || keyDim <= 0 || valueDim <= 0)
    return emitError() << "kv_cache sizes must be positive, got heads = "
                       << heads << ", key_dim = " << keyDim
                       << ", value_dim = " << valueDim;
  return verifyCacheElementType(emitError, elementType);
}

LogicalResult
LatentCacheType::verify(function_ref<InFlightDiagnostic()> emitError,
                        int64_t latentDim, int64_t ropeDim, Type elementType) {
  if (latentDim <= 0 || ropeDim <= 0 || ropeDim % 2 != 0)
    return emitError() << "latent_cache needs a positive latent size and a "
                          "positive even rope size, got latent = "
                       << latentDim << ", rope = " << ropeDim;
  return verifyCacheElementType(emitError, elementType);
}
