//===- Passes.td - melt passes -----------------------------*- tablegen -*-===//
#ifndef MELT_PASSES_TD
#define MELT_PASSES_TD

include "mlir/Pass/PassBase.td"

//===----------------------------------------------------------------------===//
// Analysis and reports
//===----------------------------------------------------------------------===//

def ModelReportPass : Pass<"melt-model-report", "::mlir::ModuleOp"> {
  let summary = "report parameters, weight bytes and KV-cache bytes per token";
  let description = [{
    Reads the weights and the cache types of a model and writes a summary:
    number of weight symbols, parameters, bytes per storage type (block
    scales counted apart), and the KV cache per token — values per layer,
    bytes per layer and in total. The IR is not changed. It is how a user
    sees what `melt-fuse-mla` and `melt-assign-precision` buy, and how the
    tests check that a built-in model has the size of the real one.

    ```
    $ melt-opt --melt-model-report='output=-' model.mlir -o /dev/null
    melt model report
      weights: 1850 symbols, 684531386176 parameters
      ...
    ```
  }];
  let options = [
    Option<"output", "output", "std::string", /*default=*/"\"-\"",
           "where to write the report ('-' for stderr)">,
    Option<"json", "json", "bool", /*default=*/"false",
           "write JSON instead of text">,
  ];
  let dependentDialects = ["::mlir::melt::MeltDialect"];
}

#endif // MELT_PASSES_TD
