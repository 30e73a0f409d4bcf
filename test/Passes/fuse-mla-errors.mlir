// melt-fuse-mla: bad options are diagnostics at the module.
// RUN: rm -rf %t && split-file --no-leading-lines %s %t && cd %t
// RUN: melt-opt prefill.mlir '--melt-fuse-mla=prefill=sometimes' -verify-diagnostics
// RUN: melt-opt threshold.mlir '--melt-fuse-mla=prefill-threshold=-5' -verify-diagnostics

//--- prefill.mlir
// expected-error@+1 {{melt-fuse-mla: prefill must be auto, absorbed or decompressed, not 'sometimes'}}
module {}
//--- threshold.mlir
// expected-error@+1 {{melt-fuse-mla: prefill-threshold must be >= 0, got -5}}
module {}
