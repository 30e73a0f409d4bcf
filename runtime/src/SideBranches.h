//===- SideBranches.h - work of a step that may run beside the rest -------===//
//
// A MoE layer adds two results made from the same input: the routed
// experts' (router, then experts) and the shared expert's (gate and up
// products, SiLU-mul, down product); MLA reads a query made by the q_a
// norm, the q_b product and the query's RoPE, and a cache the kv norm,
// the key's RoPE and the latent append fill. At a decode step's few tokens
// each is a chain of kernels that leaves most of a GPU idle, one after the
// other, yet nothing ties the two chains together but their common input
// and the kernel that reads both: a device that records a step may run one
// beside the other (Device::markBranch ... joinBranch: a graph's second
// branch).
//
// A side branch here is the private slice of one input of a kernel (the
// join): the kernels that make it, back through values that nothing else
// reads, of kinds that touch no cache and no routing (products, SiLU-muls,
// quantize pairs, norms, ropes, reshapes and splits). It starts after the
// last kernel that makes one of its inputs (the fork); another input of
// the join must be made between the fork and the join (the work it
// overlaps). Of a join's inputs the largest branch is taken.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_SIDEBRANCHES_H
#define MELT_RUNTIME_SIDEBRANCHES_H

#include "Artifact.h"

#include <cstdint>
#include <map>
#include <vector>

namespace melt::rt {

struct SideBranch {
  /// The kernel before which the fork is marked: the first in the
  /// function's order after the last kernel that makes a branch input.
  uint32_t markBefore = 0;
  /// The branch's kernels, in the function's order.
  std::vector<uint32_t> kernels;
  /// The kernel that reads the branch's result (join before it).
  uint32_t join = 0;
};

/// The side branches of `function`, in its order; none overlap.
/// `sameMemory` maps a value the executor makes as a view of another (a
/// folded quantize pair's dequantized value, QuantizeFolds.h) to that
/// other: a branch reading it forks after the other is made.
std::vector<SideBranch>
findSideBranches(const fb::Model &model, const fb::Function &function,
                 const std::map<uint32_t, uint32_t> &sameMemory = {});

} // namespace melt::rt

#endif // MELT_RUNTIME_SIDEBRANCHES_H
