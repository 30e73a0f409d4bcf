// melt-plan-memory: bad options and an unwritable report are diagnostics at
// the module.
// RUN: rm -rf %t && split-file --no-leading-lines %s %t && cd %t
// RUN: melt-opt batch.mlir '--melt-plan-memory=max-batch=0' -verify-diagnostics
// RUN: melt-opt context.mlir '--melt-plan-memory=max-context=-1' -verify-diagnostics
// RUN: melt-opt tokens.mlir '--melt-plan-memory=max-tokens=0' -verify-diagnostics
// RUN: melt-opt report.mlir '--melt-plan-memory=report=%t/no/such/dir/r.txt' -verify-diagnostics

//--- batch.mlir
// expected-error@+1 {{melt-plan-memory: max-batch, max-context and max-tokens must be at least 1}}
module {}
//--- context.mlir
// expected-error@+1 {{melt-plan-memory: max-batch, max-context and max-tokens must be at least 1}}
module {}
//--- tokens.mlir
// expected-error@+1 {{melt-plan-memory: max-batch, max-context and max-tokens must be at least 1}}
module {}
//--- report.mlir
// expected-error@+1 {{melt-plan-memory: cannot write the report: }}
module {}
