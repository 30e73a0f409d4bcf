//===- PassReport.cpp - where the passes' reports go ----------------------===//
#include "passes/PassReport.h"

#include "mlir/Support/FileUtilities.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;

LogicalResult mlir::melt::writePassReport(Operation *op,
                                          llvm::StringRef destination,
                                          llvm::StringRef text,
                                          llvm::StringRef failureMessage) {
  if (destination == "-") {
    llvm::errs() << text;
    return success();
  }
  // ToolOutputFile removes the file unless it is kept, so a failed run
  // leaves no half-written report behind.
  std::string error;
  auto file = openOutputFile(destination, &error);
  if (!file)
    return op->emitError() << failureMessage << ": " << error;
  file->os() << text;
  file->keep();
  return success();
}
