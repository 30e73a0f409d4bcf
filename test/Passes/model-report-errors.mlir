// melt-model-report: an unwritable report is a diagnostic at the module,
// and no partial file is left.
// RUN: rm -rf %t && split-file --no-leading-lines %s %t && cd %t
// RUN: melt-opt report.mlir '--melt-model-report=output=%t/no/such/dir/r.txt' -verify-diagnostics
// RUN: not ls %t/no

//--- report.mlir
// expected-error@+1 {{cannot write the model report: }}
module {}
