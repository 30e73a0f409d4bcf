//===- PassReport.h - where the passes' reports go --------------*- C++ -*-===//
//
// The report passes print (model report, precision, placement, memory): to
// stderr for '-', else to a file that is written whole or not at all.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_PASSES_PASSREPORT_H
#define MELT_PASSES_PASSREPORT_H

#include "mlir/IR/Operation.h"
#include "mlir/Support/LogicalResult.h"

namespace mlir::melt {

/// Writes `text` to `destination` ('-': stderr). On failure emits
/// "<failureMessage>: <reason>" at `op`.
LogicalResult writePassReport(Operation *op, llvm::StringRef destination,
                              llvm::StringRef text,
                              llvm::StringRef failureMessage);

} // namespace mlir::melt

#endif // MELT_PASSES_PASSREPORT_H
