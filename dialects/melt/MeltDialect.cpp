//===- MeltDialect.cpp - dialect registration -------------------*- C++ -*-===//
#include "dialects/melt/MeltDialect.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/DialectImplementation.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;
using namespace mlir::melt;

#include "dialects/melt/MeltDialect.cpp.inc"
#include "dialects/melt/MeltEnums.cpp.inc"

#define GET_ATTRDEF_CLASSES
#include "dialects/melt/MeltAttrs.cpp.inc"

#define GET_TYPEDEF_CLASSES
#include "dialects/melt/MeltTypes.cpp.inc"

void MeltDialect::initialize() {
  addAttributes<
#define GET_ATTRDEF_LIST
#include "dialects/melt/MeltAttrs.cpp.inc"
      >();
  addTypes<
#define GET_TYPEDEF_LIST
#include "dialects/melt/MeltTypes.cpp.inc"
      >();
  addOperations<
#define GET_OP_LIST
#include "dialects/melt/MeltOps.cpp.inc"
      >();
}

bool mlir::melt::isFp8Type(Type type) {
  return llvm::isa<Float8E4M3FNType, Float8E4M3FNUZType>(type);
}

int64_t mlir::melt::ceilDivDim(int64_t size, int64_t block) {
  if (ShapedType::isDynamic(size))
    return ShapedType::kDynamic;
  return (size + block - 1) / block;
}
