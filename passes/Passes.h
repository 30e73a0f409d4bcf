//===- Passes.h - melt passes -----------------------------------*- C++ -*-===//
#ifndef MELT_PASSES_PASSES_H
#define MELT_PASSES_PASSES_H

#include "dialects/melt/MeltDialect.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Pass/Pass.h"

namespace mlir::melt {

#define GEN_PASS_DECL
#include "passes/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "passes/Passes.h.inc"

} // namespace mlir::melt

#endif // MELT_PASSES_PASSES_H
