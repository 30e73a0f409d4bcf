//===- MeltDialect.h - the melt dialect -------------------------*- C++ -*-===//
//
// One header for the whole dialect: enums, attributes, types and ops.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_DIALECTS_MELT_MELTDIALECT_H
#define MELT_DIALECTS_MELT_MELTDIALECT_H

#include "mlir/Bytecode/BytecodeOpInterface.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/DialectImplementation.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/SymbolTable.h"
#include "mlir/Interfaces/InferTypeOpInterface.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

namespace mlir::melt {
/// Parses a float literal as a double (the parser of f64 attribute
/// parameters).
FailureOr<llvm::APFloat> parseF64(AsmParser &parser);
} // namespace mlir::melt

#include "dialects/melt/MeltDialect.h.inc"
#include "dialects/melt/MeltEnums.h.inc"

#define GET_ATTRDEF_CLASSES
#include "dialects/melt/MeltAttrs.h.inc"

#define GET_TYPEDEF_CLASSES
#include "dialects/melt/MeltTypes.h.inc"

#define GET_OP_CLASSES
#include "dialects/melt/MeltOps.h.inc"

namespace mlir::melt {

/// True for the FP8 formats melt stores weights in (OCP e4m3fn for NVIDIA
/// and CPUs, e4m3fnuz for MI300).
bool isFp8Type(Type type);

/// ceil(size / block) for a static size; dynamic stays dynamic.
int64_t ceilDivDim(int64_t size, int64_t block);

} // namespace mlir::melt

#endif // MELT_DIALECTS_MELT_MELTDIALECT_H
