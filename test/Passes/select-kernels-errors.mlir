// melt-select-kernels: bad options, weights beyond the device and an
// unwritable report are diagnostics at the module.
// RUN: rm -rf %t && split-file --no-leading-lines %s %t && cd %t
// RUN: melt-opt target.mlir '--melt-select-kernels=target=hip' -verify-diagnostics
// RUN: melt-opt memory.mlir '--melt-select-kernels=device-memory=0' -verify-diagnostics
// RUN: melt-opt big.mlir '--melt-select-kernels=device-memory=0.000001 report=/dev/null' -verify-diagnostics
// RUN: melt-opt report.mlir '--melt-select-kernels=report=%t/no/such/dir/r.txt' -verify-diagnostics
// RUN: melt-opt tokens.mlir '--melt-select-kernels=prefill-tokens=0' -verify-diagnostics
// Weights that fit but leave no room for one context of KV cache beside a
// prefill's activations (tiny: 2.56 MiB of weights, 54 MiB of activations).
// RUN: melt-import --builtin=tiny | not melt-opt --melt-fuse-mla '--melt-plan-memory=report=/dev/null' '--melt-select-kernels=device-memory=0.012 report=/dev/null' -o /dev/null 2>&1 | FileCheck %s --check-prefix=ROOM
// ROOM: error: melt-select-kernels: the device has room for 0 tokens of KV cache beside the weights (2.56 MiB) and a prefill of 8192 tokens, less than one context of 4096; give it more devices or a shorter context

//--- target.mlir
// expected-error@+1 {{melt-select-kernels: unknown target 'hip' (targets: cpu, cuda)}}
module {}
//--- memory.mlir
// expected-error@+1 {{melt-select-kernels: device-memory must be positive GiB}}
module {}
//--- big.mlir
// 4096 x 1024 f32 = 16 MiB, beyond 1 KiB.
// expected-error@+1 {{melt-select-kernels: the weights need 16.00 MiB on the device, more than its 1.05 KiB (device-memory)}}
module {
  melt.weight @w : tensor<4096x1024xf32> from [#melt.tensor<"w">]
}
//--- report.mlir
// expected-error@+1 {{melt-select-kernels: cannot write the report: }}
module {}
//--- tokens.mlir
// expected-error@+1 {{melt-select-kernels: prefill-tokens must be at least 1}}
module {}
