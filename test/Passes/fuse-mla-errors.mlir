// melt-fuse-mla: bad options are diagnostics at the module; IR it cannot
// rewrite is a diagnostic at the op (non-MLA attention: fuse-mla.mlir).
// RUN: rm -rf %t && split-file --no-leading-lines %s %t && cd %t
// RUN: melt-opt prefill.mlir '--melt-fuse-mla=prefill=sometimes' -verify-diagnostics
// RUN: melt-opt threshold.mlir '--melt-fuse-mla=prefill-threshold=-5' -verify-diagnostics
// The tiny model with layer 0's cache appended to twice: the second append's
// cache is no function argument, so the latent cache cannot replace it.
// RUN: melt-import --builtin=tiny | sed -E '0,/^( *)(%%[0-9]+) = melt.kv_cache_append (%%arg[0-9]+)(.*)$/s//\1%%pre = melt.kv_cache_append \3\4\n\1\/\/ expected-error @+1 {{melt-fuse-mla: the cache must be a function argument}}\n\1\2 = melt.kv_cache_append %%pre\4/' > cache.mlir
// RUN: grep -q 'expected-error' cache.mlir
// RUN: melt-opt cache.mlir --melt-fuse-mla -verify-diagnostics -o /dev/null

//--- prefill.mlir
// expected-error@+1 {{melt-fuse-mla: prefill must be auto, absorbed or decompressed, not 'sometimes'}}
module {}
//--- threshold.mlir
// expected-error@+1 {{melt-fuse-mla: prefill-threshold must be >= 0, got -5}}
module {}
