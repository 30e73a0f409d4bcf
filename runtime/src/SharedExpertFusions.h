//===- SharedExpertFusions.h - a shared expert in the routed experts' call ===//
//
// A DeepSeek MoE layer adds two things of the same x: the routed experts'
// weighted sum (MoEExperts) and the shared expert, an MLP of three linears
// and a SiLU-mul. A decode step of one token reads each of them row by row
// on a GPU, and the shared expert's three products, each its own launch,
// then the add, stand one after the other on the step's path. A device
// whose expert kernels can read the shared expert as one more expert of
// each token (Device::fusesSharedExpert) runs the group in one call
// (Device::moeExpertsWithShared); the executor decides each step, by its
// tokens, and otherwise runs the kernels as they are.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_SHAREDEXPERTFUSIONS_H
#define MELT_RUNTIME_SHAREDEXPERTFUSIONS_H

#include "Artifact.h"
#include "QuantizeFolds.h"

#include <cstdint>
#include <vector>

namespace melt::rt {

/// The kernels of a MoE layer's routed and shared experts and their add.
struct SharedExpertFusion {
  uint32_t experts = 0;      // MoEExperts of x
  uint32_t gate = 0, up = 0; // the shared expert's Linear kernels of x
  uint32_t siluMul = 0;      // SiluMul(gate's value, up's value)
  uint32_t down = 0;         // Linear of the SiLU-mul's value
  uint32_t add = 0;          // Add of the experts' and down's values
  /// All of them, with a folded quantize pair between the SiLU-mul and down
  /// where there is one, in the function's order: consecutive there.
  std::vector<uint32_t> kernels;
};

/// The groups of `function` where a MoEExperts kernel and the gate and up
/// Linear kernels of an MLP read the same x, the MLP's SiLU-mul reads gate
/// and up, its down Linear reads the SiLU-mul's value (directly or through
/// a pair of `folds`), and an Add of the experts' and down's values is the
/// one reader of both; every value inside the group has no reader outside
/// it and is no output of the function, and the group's kernels are
/// consecutive in the function's order.
std::vector<SharedExpertFusion>
findSharedExpertFusions(const fb::Model &model, const fb::Function &function,
                        const std::vector<QuantizeFold> &folds);

} // namespace melt::rt

#endif // MELT_RUNTIME_SHAREDEXPERTFUSIONS_H
