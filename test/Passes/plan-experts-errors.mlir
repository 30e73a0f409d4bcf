// melt-plan-experts: every bad option and every bad statistics file is a
// diagnostic at the module (checked with -verify-diagnostics). Each case
// below is one expectation, put in front of the shared module moe.mlir.
// RUN: rm -rf %t && split-file --no-leading-lines %s %t && cd %t
// RUN: cat devices.mlir moe.mlir > a.mlir && melt-opt a.mlir '--melt-plan-experts=devices=0' -verify-diagnostics
// RUN: cat uneven.mlir moe.mlir > a.mlir && melt-opt a.mlir '--melt-plan-experts=devices=3' -verify-diagnostics
// RUN: cat nodes.mlir moe.mlir > a.mlir && melt-opt a.mlir '--melt-plan-experts=devices=4 nodes=3' -verify-diagnostics
// RUN: cat policy.mlir moe.mlir > a.mlir && melt-opt a.mlir '--melt-plan-experts=policy=random' -verify-diagnostics
// RUN: cat redundant.mlir moe.mlir > a.mlir && melt-opt a.mlir '--melt-plan-experts=devices=2 redundant=-2' -verify-diagnostics
// RUN: cat missing.mlir moe.mlir > a.mlir && melt-opt a.mlir '--melt-plan-experts=stats=%t/missing.json' -verify-diagnostics
// RUN: cat truncated.mlir moe.mlir > a.mlir && melt-opt a.mlir '--melt-plan-experts=stats=%t/truncated.json' -verify-diagnostics
// RUN: cat negative.mlir moe.mlir > a.mlir && melt-opt a.mlir '--melt-plan-experts=stats=%t/negative.json' -verify-diagnostics
// RUN: cat short.mlir moe.mlir > a.mlir && melt-opt a.mlir '--melt-plan-experts=stats=%t/short.json' -verify-diagnostics
// RUN: cat experts.mlir moe.mlir > a.mlir && melt-opt a.mlir '--melt-plan-experts=stats=%t/experts.json' -verify-diagnostics
// RUN: cat pairs.mlir moe.mlir > a.mlir && melt-opt a.mlir '--melt-plan-experts=stats=%t/pairs.json' -verify-diagnostics
// RUN: cat routers.mlir moe.mlir > a.mlir && melt-opt a.mlir '--melt-plan-experts=stats=%t/routers.json' -verify-diagnostics
// RUN: cat report.mlir moe.mlir > a.mlir && melt-opt a.mlir '--melt-plan-experts=devices=2 report=%t/no/such/dir/report.txt' -verify-diagnostics

//--- devices.mlir
// expected-error@+1 {{melt-plan-experts: devices must be at least 1, got 0}}
//--- uneven.mlir
// expected-error@+8 {{melt-plan-experts: 8 experts + 0 redundant replicas do not fill 3 devices evenly}}
//--- nodes.mlir
// expected-error@+8 {{melt-plan-experts: nodes (3) must divide devices (4)}}
//--- policy.mlir
// expected-error@+1 {{melt-plan-experts: policy must be balanced or affinity, not 'random'}}
//--- redundant.mlir
// expected-error@+8 {{melt-plan-experts: redundant must be >= 0, got -2}}
//--- missing.mlir
// expected-error@+1 {{missing.json: cannot read}}
//--- truncated.json
{"routers": [
//--- truncated.mlir
// expected-error@+1 {{truncated.json: 2:0: invalid JSON: Unexpected EOF}}
//--- negative.json
{"routers": [{"gate": "gate", "counts": [1, 2, -3, 4, 5, 6, 7, 8]}]}
//--- negative.mlir
// expected-error@+1 {{negative.json: routers[0].counts[2] must be a non-negative number}}
//--- short.json
{"routers": [{"gate": "gate", "counts": [1, 2, 3]}]}
//--- short.mlir
// expected-error@+8 {{short.json: router 'gate' has 3 counts, the model's has 8 experts}}
//--- experts.json
{"routers": [{"gate": "gate", "experts": 9, "counts": [1, 2, 3, 4, 5, 6, 7, 8]}]}
//--- experts.mlir
// expected-error@+1 {{experts.json: routers[0] says 9 experts but has 8 counts}}
//--- pairs.json
{"routers": [{"gate": "gate", "counts": [1, 2, 3, 4, 5, 6, 7, 8], "pairs": [[0, 9, 1]]}]}
//--- pairs.mlir
// expected-error@+1 {{pairs.json: routers[0].pairs[0] must be [i, j, count] with distinct experts below 8 and count >= 0}}
//--- routers.json
{"experts": []}
//--- routers.mlir
// expected-error@+1 {{routers.json: 'routers' must be an array}}
//--- report.mlir
// expected-error@+1 {{report.txt}}
//--- moe.mlir
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
