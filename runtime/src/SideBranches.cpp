//===- SideBranches.cpp - work of a step that may run beside the rest -----===//
#include "SideBranches.h"

#include "FunctionUses.h"

#include <algorithm>
#include <map>
#include <set>

using namespace melt;
using namespace melt::rt;

namespace {

/// Kinds a branch may hold: they read activations, weights and the step's
/// positions only, and write their own values.
bool branchKind(fb::KernelKind kind) {
  switch (kind) {
  case fb::KernelKind::Linear:
  case fb::KernelKind::SiluMul:
  case fb::KernelKind::Quantize:
  case fb::KernelKind::Dequantize:
  case fb::KernelKind::Reshape:
  case fb::KernelKind::Convert:
  case fb::KernelKind::Split:
  case fb::KernelKind::RMSNorm:
  case fb::KernelKind::Rope:
    return true;
  default:
    return false;
  }
}

struct Analysis {
  const fb::Model &model;
  FunctionUses uses;
  const std::map<uint32_t, uint32_t> &sameMemory;
  std::map<uint32_t, int> position;

  Analysis(const fb::Model &model, const fb::Function &function,
           const std::map<uint32_t, uint32_t> &sameMemory)
      : model(model), uses(model, function), sameMemory(sameMemory) {
    int at = 0;
    for (uint32_t k : *function.kernels())
      position[k] = at++;
  }
  const fb::Kernel &kernel(uint32_t k) const {
    return *model.kernels()->Get(k);
  }
  /// The kernel of the function that makes `value`, or -1.
  int64_t producerOf(uint32_t value) const {
    auto it = uses.producer.find(value);
    return it == uses.producer.end() ? -1 : int64_t(it->second);
  }
  /// Whether every output of k has readers, all of them in `within` or
  /// `join`, and none is an output of the function.
  bool private_(uint32_t k, const std::set<uint32_t> &within,
                uint32_t join) const {
    const fb::Kernel &kk = kernel(k);
    if (!kk.outputs() || kk.outputs()->size() == 0)
      return false;
    for (uint32_t value : *kk.outputs()) {
      if (uses.outputs.count(value))
        return false;
      auto readers = uses.readers.find(value);
      if (readers == uses.readers.end() || readers->second.empty())
        return false;
      for (uint32_t r : readers->second)
        if (r != join && !within.count(r))
          return false;
    }
    return true;
  }

  /// The side branch making input `value` of `join`, if there is one
  /// (the join's other inputs `others`).
  bool branchOf(uint32_t join, uint32_t value,
                const std::vector<uint32_t> &others,
                const fb::Function &function, SideBranch &out) const {
    const int64_t made = producerOf(value);
    if (made < 0 || !branchKind(kernel(uint32_t(made)).kind()))
      return false;
    // The slice: back from the operand's producer through kernels whose
    // every output only the slice (or the join) reads.
    std::set<uint32_t> slice{uint32_t(made)};
    for (bool grew = true; grew;) {
      grew = false;
      for (uint32_t s : std::vector<uint32_t>(slice.begin(), slice.end())) {
        const fb::Kernel &sk = kernel(s);
        if (!sk.inputs())
          continue;
        for (uint32_t input : *sk.inputs()) {
          const int64_t p = producerOf(input);
          if (p < 0 || slice.count(uint32_t(p)) ||
              !branchKind(kernel(uint32_t(p)).kind()))
            continue;
          std::set<uint32_t> with = slice;
          with.insert(uint32_t(p));
          if (private_(uint32_t(p), with, join)) {
            slice.insert(uint32_t(p));
            grew = true;
          }
        }
      }
    }
    bool anyProduct = false;
    int first = INT32_MAX, fork = -1;
    for (uint32_t s : slice) {
      if (!private_(s, slice, join))
        return false;
      const fb::Kernel &sk = kernel(s);
      anyProduct |= sk.kind() == fb::KernelKind::Linear;
      first = std::min(first, position.at(s));
      if (sk.inputs())
        for (uint32_t input : *sk.inputs()) {
          int64_t p = producerOf(input);
          if (p < 0 || slice.count(uint32_t(p)))
            continue;
          // A view's memory is made where the value it views is.
          auto viewed = sameMemory.find(input);
          if (viewed != sameMemory.end())
            p = producerOf(viewed->second);
          if (p >= 0)
            fork = std::max(fork, position.at(uint32_t(p)));
        }
    }
    // Work of the step's own between the fork and the join to overlap:
    // another input of the join made after the fork, outside the branch.
    bool overlaps = false;
    for (uint32_t other : others) {
      const int64_t otherMade = producerOf(other);
      overlaps |= otherMade >= 0 && !slice.count(uint32_t(otherMade)) &&
                  position.at(uint32_t(otherMade)) > fork;
    }
    if (!anyProduct || fork >= first || !overlaps)
      return false;
    out.markBefore = function.kernels()->Get(uint32_t(fork + 1));
    out.kernels.assign(slice.begin(), slice.end());
    std::sort(out.kernels.begin(), out.kernels.end(),
              [&](uint32_t a, uint32_t b) {
                return position.at(a) < position.at(b);
              });
    out.join = join;
    return true;
  }
};

} // namespace

std::vector<SideBranch>
melt::rt::findSideBranches(const fb::Model &model, const fb::Function &function,
                           const std::map<uint32_t, uint32_t> &sameMemory) {
  std::vector<SideBranch> found;
  if (!function.kernels() || !model.kernels())
    return found;
  Analysis analysis(model, function, sameMemory);
  // A join reads the branch and something else; of its inputs' branches
  // the largest is its candidate (the later inputs first on a tie: a MoE
  // layer's shared expert is its sum's second operand). Candidates are
  // taken largest first, none sharing a kernel with one taken (a MoE
  // layer's whole shared expert, not its up product beside its gate).
  std::vector<SideBranch> candidates;
  for (uint32_t k : *function.kernels()) {
    const fb::Kernel &join = analysis.kernel(k);
    if (!join.inputs() || join.inputs()->size() < 2)
      continue;
    const std::vector<uint32_t> inputs(join.inputs()->begin(),
                                       join.inputs()->end());
    SideBranch best;
    for (size_t i = inputs.size(); i-- > 0;) {
      std::vector<uint32_t> others;
      for (size_t j = 0; j < inputs.size(); ++j)
        if (inputs[j] != inputs[i])
          others.push_back(inputs[j]);
      SideBranch branch;
      if (!others.empty() &&
          analysis.branchOf(k, inputs[i], others, function, branch) &&
          branch.kernels.size() > best.kernels.size())
        best = std::move(branch);
    }
    if (!best.kernels.empty())
      candidates.push_back(std::move(best));
  }
  std::sort(candidates.begin(), candidates.end(),
            [&](const SideBranch &a, const SideBranch &b) {
              if (a.kernels.size() != b.kernels.size())
                return a.kernels.size() > b.kernels.size();
              return analysis.position.at(a.join) <
                     analysis.position.at(b.join);
            });
  std::set<uint32_t> taken;
  for (SideBranch &branch : candidates) {
    bool free = true;
    for (uint32_t b : branch.kernels)
      free &= !taken.count(b);
    if (!free)
      continue;
    taken.insert(branch.kernels.begin(), branch.kernels.end());
    found.push_back(std::move(branch));
  }
  // In the function's order.
  std::sort(found.begin(), found.end(),
            [&](const SideBranch &a, const SideBranch &b) {
              return analysis.position.at(a.join) <
                     analysis.position.at(b.join);
            });
  return found;
}
