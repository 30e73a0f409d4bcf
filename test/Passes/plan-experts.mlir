// melt-plan-experts: placement of experts and replicas from load statistics.
// RUN: melt-opt %s '--melt-plan-experts=devices=2 redundant=2 stats=%S/Inputs/expert-stats.json' 2>%t.report | FileCheck %s --check-prefix=BALANCED
// RUN: FileCheck %s --check-prefix=REPORT < %t.report
// RUN: melt-opt %s '--melt-plan-experts=devices=2 stats=%S/Inputs/expert-stats.json policy=affinity json=true' 2>&1 >/dev/null | FileCheck %s --check-prefix=AFFINITY
// RUN: melt-opt %s '--melt-plan-experts=devices=4 redundant=4 nodes=2 stats=%S/Inputs/expert-stats.json' -o /dev/null 2>&1 | FileCheck %s --check-prefix=NODES
// RUN: melt-opt %s '--melt-plan-experts=devices=4' 2>/dev/null | FileCheck %s --check-prefix=UNIFORM
// Builder-made models: tiny (3 MoE layers of 8 experts) and V3 (58 of 256).
// RUN: melt-import --builtin=tiny | melt-opt '--melt-plan-experts=devices=2 redundant=2' 2>%t.tiny | FileCheck %s --check-prefix=TINY
// RUN: FileCheck %s --check-prefix=TINYREPORT < %t.tiny
// RUN: melt-import --builtin=v3 | melt-opt '--melt-plan-experts=devices=8 redundant=32' 2>&1 >/dev/null | FileCheck %s --check-prefix=V3

// Expert 0 (100 of 200 assignments) gets both extra replicas (most load per
// replica, as EPLB); heaviest first onto the least loaded device gives
// 103 / 97 instead of 130 / 70 for experts 0-3 | 4-7.
// BALANCED: placement = #melt.expert_placement<devices = 2, slots = [4, 0, 2, 5, 7, 0, 0, 1, 3, 6], load = [103, 97]>
// REPORT: melt expert placement: balanced, 2 devices, 2 redundant replicas
// REPORT-NEXT: gate: max/mean 1.300 -> 1.033, cross-device copies 54.0 -> 44.0
// REPORT-NEXT: all routers: worst max/mean 1.300 -> 1.033, cross-device copies 54.0 -> 44.0

// affinity keeps more co-selected pairs ((0, 4), (1, 5), ...) together at
// the same balance: 54 -> 38 copies.
// AFFINITY: "cross_device_copies_after": 38,
// AFFINITY: "policy": "affinity"
// AFFINITY: "max_over_mean_after": 1.3,

// Hierarchical: 2 nodes of 2 devices.
// NODES: melt expert placement: balanced, 4 devices, 4 redundant replicas

// Without statistics, every expert counts the same: 2 per device.
// UNIFORM: placement = #melt.expert_placement<devices = 4, slots = [0, 4, 1, 5, 2, 6, 3, 7], load = [2, 2, 2, 2]>

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

// Without statistics every expert counts one: 8 experts + 2 replicas in 10
// slots, 5 per device, both devices loaded alike.
// TINY-COUNT-3: melt.moe_experts {{.+}}placement = #melt.expert_placement<devices = 2, slots = [{{([0-7], ){9}[0-7]}}], load = [4, 4]>
// TINYREPORT: melt expert placement: balanced, 2 devices, 2 redundant replicas
// TINYREPORT: all routers: worst max/mean 1.000 -> 1.000
// V3: melt expert placement: balanced, 8 devices, 32 redundant replicas
// V3: model.layers.3.mlp.gate: max/mean 1.000 -> 1.000
// V3: model.layers.60.mlp.gate:
