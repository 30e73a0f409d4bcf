// melt-plan-experts: bad options and bad statistics are clear errors.
// RUN: rm -rf %t && mkdir -p %t
// RUN: not melt-opt %s '--melt-plan-experts=devices=0' 2>&1 | FileCheck %s --check-prefix=DEVICES
// DEVICES: error: melt-plan-experts: devices must be at least 1, got 0
// RUN: not melt-opt %s '--melt-plan-experts=devices=3' 2>&1 | FileCheck %s --check-prefix=EVEN
// EVEN: error: melt-plan-experts: 8 experts + 0 redundant replicas do not fill 3 devices evenly
// RUN: not melt-opt %s '--melt-plan-experts=devices=4 nodes=3' 2>&1 | FileCheck %s --check-prefix=NODES
// NODES: error: melt-plan-experts: nodes (3) must divide devices (4)
// RUN: not melt-opt %s '--melt-plan-experts=policy=random' 2>&1 | FileCheck %s --check-prefix=POLICY
// POLICY: error: melt-plan-experts: policy must be balanced or affinity, not 'random'
// RUN: not melt-opt %s '--melt-plan-experts=stats=%t/missing.json' 2>&1 | FileCheck %s --check-prefix=MISSING
// MISSING: error: melt-plan-experts: {{.*}}missing.json: cannot read
// RUN: echo '{"routers": [' > %t/truncated.json
// RUN: not melt-opt %s '--melt-plan-experts=stats=%t/truncated.json' 2>&1 | FileCheck %s --check-prefix=MALFORMED
// MALFORMED: error: melt-plan-experts: {{.*}}truncated.json: 2:0: invalid JSON: Unexpected EOF
// RUN: echo '{"routers": [{"gate": "gate", "counts": [1, 2, -3, 4, 5, 6, 7, 8]}]}' > %t/negative.json
// RUN: not melt-opt %s '--melt-plan-experts=stats=%t/negative.json' 2>&1 | FileCheck %s --check-prefix=NEGATIVE
// NEGATIVE: error: melt-plan-experts: {{.*}}negative.json: routers[0].counts[2] must be a non-negative number
// RUN: echo '{"routers": [{"gate": "gate", "counts": [1, 2, 3]}]}' > %t/short.json
// RUN: not melt-opt %s '--melt-plan-experts=stats=%t/short.json' 2>&1 | FileCheck %s --check-prefix=COUNT
// COUNT: error: melt-plan-experts: {{.*}}short.json: router 'gate' has 3 counts, the model's has 8 experts
// RUN: echo '{"routers": [{"gate": "gate", "experts": 9, "counts": [1, 2, 3, 4, 5, 6, 7, 8]}]}' > %t/experts.json
// RUN: not melt-opt %s '--melt-plan-experts=stats=%t/experts.json' 2>&1 | FileCheck %s --check-prefix=EXPERTS
// EXPERTS: error: melt-plan-experts: {{.*}}experts.json: routers[0] says 9 experts but has 8 counts
// RUN: echo '{"routers": [{"gate": "gate", "counts": [1, 2, 3, 4, 5, 6, 7, 8], "pairs": [[0, 9, 1]]}]}' > %t/pairs.json
// RUN: not melt-opt %s '--melt-plan-experts=stats=%t/pairs.json' 2>&1 | FileCheck %s --check-prefix=PAIRS
// PAIRS: error: melt-plan-experts: {{.*}}pairs.json: routers[0].pairs[0] must be [i, j, count] with distinct experts below 8 and count >= 0
// RUN: echo '{"experts": []}' > %t/noroutes.json
// RUN: not melt-opt %s '--melt-plan-experts=stats=%t/noroutes.json' 2>&1 | FileCheck %s --check-prefix=ROUTERS
// ROUTERS: error: melt-plan-experts: {{.*}}noroutes.json: 'routers' must be an array
module {
  melt.weight @gate : tensor<8x32xbf16> from [#melt.tensor<"gate.weight">]
  melt.weight @g : tensor<8x16x32xbf16> from [#melt.tensor<"g">]
  melt.weight @u : tensor<8x16x32xbf16> from [#melt.tensor<"u">]
  melt.weight @d : tensor<8x32x16xbf16> from [#melt.tensor<"d">]
  func.func @moe(%x: tensor<?x32xbf16>) -> tensor<?x32xbf16> {
    %idx, %w = melt.moe_router %x, @gate scoring softmax method greedy {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, norm_topk_prob = false, routed_scaling_factor = 1.0 : f64} : tensor<?x32xbf16> -> tensor<?x2xi32>, tensor<?x2xf32>
    %y = melt.moe_experts %x, %idx, %w gate @g up @u down @d : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
    return %y : tensor<?x32xbf16>
  }
}
