// melt-assign-precision: every bad option, bad policy file, and bad
// calibration input is a diagnostic at the module (-verify-diagnostics).
// RUN: rm -rf %t && split-file --no-leading-lines %s %t && cd %t
// RUN: melt-opt policy.mlir '--melt-assign-precision=policy=int4' -verify-diagnostics
// RUN: melt-opt opkind.mlir '--melt-assign-precision=bf16-ops=attention' -verify-diagnostics
// RUN: melt-opt filetype.mlir '--melt-assign-precision=policy-file=%t/type.json' -verify-diagnostics
// RUN: melt-opt filekey.mlir '--melt-assign-precision=policy-file=%t/key.json' -verify-diagnostics
// RUN: melt-opt filesyntax.mlir '--melt-assign-precision=policy-file=%t/syntax.json' -verify-diagnostics
// RUN: melt-opt filemissing.mlir '--melt-assign-precision=policy-file=%t/missing.json' -verify-diagnostics
// RUN: melt-opt filepolicy.mlir '--melt-assign-precision=policy-file=%t/int4.json' -verify-diagnostics
// RUN: melt-opt nockpt.mlir '--melt-assign-precision=policy=auto' -verify-diagnostics
// RUN: melt-opt budget.mlir '--melt-assign-precision=policy=auto checkpoint=%t budget=0' -verify-diagnostics
// RUN: melt-opt ckptmissing.mlir '--melt-assign-precision=policy=auto checkpoint=%t/nowhere' -verify-diagnostics
// The calibration errors need a model that matches its checkpoint.
// RUN: melt-import %S/../golden/v3-tiny/checkpoint -o model.mlir 2>/dev/null
// RUN: %python -c "import json,struct,sys; h=json.dumps({'input_64': {'dtype': 'F32', 'shape': [4, 32], 'data_offsets': [0, 512]}}).encode(); open(sys.argv[1],'wb').write(struct.pack('<Q',len(h))+h+bytes(512))" badcalib.safetensors
// RUN: cat badcalib.mlir model.mlir > a.mlir && melt-opt a.mlir '--melt-assign-precision=policy=auto checkpoint=%S/../golden/v3-tiny/checkpoint calibration=%t/badcalib.safetensors' -verify-diagnostics
// RUN: cat garbage.mlir model.mlir > a.mlir && melt-opt a.mlir '--melt-assign-precision=policy=auto checkpoint=%S/../golden/v3-tiny/checkpoint calibration=%t/garbage.safetensors' -verify-diagnostics
// A weight the checkpoint lacks cannot be measured: an error at the weight.
// RUN: sed -E 's/^( *)(melt.weight @model.layers.0.self_attn.q_a_proj .*)"model.layers.0.self_attn.q_a_proj.weight"(.*)$/\1\/\/ expected-error @+1 {{melt-assign-precision: cannot measure @model.layers.0.self_attn.q_a_proj}}\n\1\2"model.layers.0.self_attn.q_a_proj.absent"\3/' model.mlir > absent.mlir
// RUN: grep -q 'expected-error' absent.mlir
// RUN: melt-opt absent.mlir '--melt-assign-precision=policy=auto checkpoint=%S/../golden/v3-tiny/checkpoint' -verify-diagnostics -o /dev/null
// RUN: cat report.mlir model.mlir > a.mlir && melt-opt a.mlir '--melt-assign-precision=policy=auto checkpoint=%S/../golden/v3-tiny/checkpoint budget=0.5 report=%t/no/such/dir/r.txt' -verify-diagnostics

//--- policy.mlir
// expected-error@+1 {{melt-assign-precision: policy must be deepseek-v3, bf16, fp32 or auto, not 'int4'}}
module {}
//--- opkind.mlir
// expected-error@+1 {{melt-assign-precision: unknown op kind 'attention' in bf16-ops (kinds: linear, moe_experts)}}
module {}
//--- type.json
{"policy": "bf16", "bf16": "lm_head"}
//--- filetype.mlir
// expected-error@+1 {{type.json: 'bf16' must be a list of strings}}
module {}
//--- key.json
{"polcy": "bf16"}
//--- filekey.mlir
// expected-error@+1 {{key.json: unknown key 'polcy' (keys: policy, bf16, bf16_ops, budget)}}
module {}
//--- syntax.json
{"policy": "bf16",
//--- filesyntax.mlir
// expected-error@+1 {{syntax.json: }}
module {}
//--- filemissing.mlir
// expected-error@+1 {{missing.json: No such file or directory}}
module {}
//--- int4.json
{"policy": "int4"}
//--- filepolicy.mlir
// expected-error@+1 {{policy must be deepseek-v3, bf16, fp32 or auto, not 'int4'}}
module {}
//--- nockpt.mlir
// expected-error@+1 {{melt-assign-precision: policy=auto measures the weights: give checkpoint=DIR}}
module {}
//--- budget.mlir
// expected-error@+1 {{melt-assign-precision: budget must be positive}}
module {}
//--- ckptmissing.mlir
// expected-error@+1 {{nowhere: is not a directory}}
module {}
//--- garbage.safetensors
not safetensors
//--- badcalib.mlir
// expected-error@+1 {{badcalib.safetensors: tensor 'input_64' must be F32 [rows, 64]}}
//--- garbage.mlir
// expected-error@+1 {{garbage.safetensors: header length}}
//--- report.mlir
// expected-error@+1 {{melt-assign-precision: cannot write the report: }}
