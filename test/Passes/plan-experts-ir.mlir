// melt-plan-experts on IR it cannot place: diagnostics at the op.
// RUN: melt-opt %s --split-input-file '--melt-plan-experts=devices=2' --verify-diagnostics
// The second module is placed: 4 experts and 2 replicas in 6 slots, 3 per
// device, with equal loads (no statistics: every expert counts 1).
// RUN: not melt-opt %s --split-input-file '--melt-plan-experts=devices=2 redundant=2' 2>/dev/null | FileCheck %s
// CHECK: melt.moe_experts {{.+}} {placement = #melt.expert_placement<devices = 2, slots = [{{([0-3], ){5}[0-3]}}], load = [2, 2]>}

melt.weight @experts.gate : tensor<4x16x32xbf16> from [#melt.tensor<"e.0.g">, #melt.tensor<"e.1.g">, #melt.tensor<"e.2.g">, #melt.tensor<"e.3.g">]
melt.weight @experts.up : tensor<4x16x32xbf16> from [#melt.tensor<"e.0.u">, #melt.tensor<"e.1.u">, #melt.tensor<"e.2.u">, #melt.tensor<"e.3.u">]
melt.weight @experts.down : tensor<4x32x16xbf16> from [#melt.tensor<"e.0.d">, #melt.tensor<"e.1.d">, #melt.tensor<"e.2.d">, #melt.tensor<"e.3.d">]
// Expert indices from a function argument, not from a router.
func.func @forward(%x: tensor<?x32xbf16>, %idx: tensor<?x2xi32>, %w: tensor<?x2xf32>) -> tensor<?x32xbf16> {
  // expected-error @below {{melt-plan-experts: expert indices must come from a melt.moe_router}}
  %y = melt.moe_experts %x, %idx, %w gate @experts.gate up @experts.up down @experts.down
      : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
  return %y : tensor<?x32xbf16>
}

// -----

// A router over an expert count the placement can take: placed, no error.
melt.weight @gate : tensor<4x32xbf16> from [#melt.tensor<"gate.weight">]
melt.weight @experts.gate : tensor<4x16x32xbf16> from [#melt.tensor<"e.0.g">, #melt.tensor<"e.1.g">, #melt.tensor<"e.2.g">, #melt.tensor<"e.3.g">]
melt.weight @experts.up : tensor<4x16x32xbf16> from [#melt.tensor<"e.0.u">, #melt.tensor<"e.1.u">, #melt.tensor<"e.2.u">, #melt.tensor<"e.3.u">]
melt.weight @experts.down : tensor<4x32x16xbf16> from [#melt.tensor<"e.0.d">, #melt.tensor<"e.1.d">, #melt.tensor<"e.2.d">, #melt.tensor<"e.3.d">]
func.func @forward(%x: tensor<?x32xbf16>) -> tensor<?x32xbf16> {
  %idx, %w = melt.moe_router %x, @gate scoring softmax method greedy
      {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, norm_topk_prob = false, routed_scaling_factor = 1.0 : f64}
      : tensor<?x32xbf16> -> tensor<?x2xi32>, tensor<?x2xf32>
  %y = melt.moe_experts %x, %idx, %w gate @experts.gate up @experts.up down @experts.down
      : (tensor<?x32xbf16>, tensor<?x2xi32>, tensor<?x2xf32>) -> tensor<?x32xbf16>
  return %y : tensor<?x32xbf16>
}
