//===- melt-opt.cpp - run melt passes on .mlir files ------------*- C++ -*-===//
//
// The opt-style driver: parses .mlir, runs any melt or upstream pass or
// pipeline, prints the result. `melt-opt --help` lists melt's passes.
//
//===----------------------------------------------------------------------===//
#include "dialects/melt/MeltDialect.h"
#include "passes/Passes.h"
#include "passes/Pipelines.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"
#include "mlir/Transforms/Passes.h"

int main(int argc, char **argv) {
  mlir::DialectRegistry registry;
  registry.insert<mlir::melt::MeltDialect, mlir::func::FuncDialect,
                  mlir::tensor::TensorDialect, mlir::arith::ArithDialect>();
  mlir::melt::registerMeltPasses();
  mlir::melt::registerMeltPipelines();
  // Generic cleanups users combine with melt's passes.
  mlir::registerCanonicalizerPass();
  mlir::registerCSEPass();
  mlir::registerSymbolDCEPass();
  mlir::registerInlinerPass();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "melt optimizer driver\n", registry));
}
