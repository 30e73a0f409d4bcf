// melt-assign-precision=policy=auto: FP8 only where the measured error of
// a GEMM fits the budget; a per-op report.
// RUN: melt-import %S/../golden/v3-tiny/checkpoint 2>/dev/null | melt-opt --melt-fuse-mla '--melt-assign-precision=policy=auto checkpoint=%S/../golden/v3-tiny/checkpoint budget=0.036 report=%t.report' | FileCheck %s
// RUN: FileCheck %s --check-prefix=REPORT < %t.report
// RUN: melt-import %S/../golden/v3-tiny/checkpoint 2>/dev/null | melt-opt '--melt-assign-precision=policy=auto checkpoint=%S/../golden/v3-tiny/checkpoint budget=0.5' 2>&1 >/dev/null | FileCheck %s --check-prefix=LOOSE
// RUN: melt-import %S/../golden/v3-tiny/checkpoint 2>/dev/null | melt-opt '--melt-assign-precision=policy=auto checkpoint=%S/../golden/v3-tiny/checkpoint budget=0.001' 2>&1 >/dev/null | FileCheck %s --check-prefix=TIGHT

// Calibration inputs from a file (input_64: the hidden size).
// RUN: %python -c "import json,struct,sys; n=4*64; h=json.dumps({'input_64': {'dtype': 'F32', 'shape': [4, 64], 'data_offsets': [0, 4*n]}}).encode(); open(sys.argv[1],'wb').write(struct.pack('<Q',len(h))+h+struct.pack('<%%df'%%n,*[((i*37)%%17-8)/8.0 for i in range(n)]))" %t.calib.safetensors
// RUN: melt-import %S/../golden/v3-tiny/checkpoint 2>/dev/null | melt-opt '--melt-assign-precision=policy=auto checkpoint=%S/../golden/v3-tiny/checkpoint calibration=%t.calib.safetensors' 2>&1 >/dev/null | FileCheck %s --check-prefix=FILE

// Bad calibration inputs: assign-precision-errors.mlir.

// Both forms appear at this budget (FP8 errors are 3.4-3.8% here).
// CHECK-DAG: compute = f8E4M3FN
// CHECK-DAG: compute = bf16, accumulate = f32, output = bf16>
// REPORT: melt precision (auto, budget 0.036): weight, precision, fp8 error, bf16 error
// REPORT: model.layers.0.mlp.down_proj: {{fp8|bf16}}, {{[0-9.]+}}e-02, {{[0-9.]+}}e-03
// REPORT: GEMM weights in fp8, {{[1-9][0-9]*}} kept in bf16
// LOOSE: 30 GEMM weights in fp8, 0 kept in bf16
// TIGHT: 0 GEMM weights in fp8, 30 kept in bf16
// FILE: model.layers.0.mlp.gate_proj: fp8,
module {}
