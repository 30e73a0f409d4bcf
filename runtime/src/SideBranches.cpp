//===- SideBranches.cpp - work of a step that may run beside the rest -----===//
#include "SideBranches.h"

#include "FunctionUses.h"

#include <algorithm>
#include <map>
#include <set>

using namespace melt;
using namespace melt::rt;

namespace {

/// Kinds a branch may hold: they read activations and weights only.
bool branchKind(fb::KernelKind kind) {
  switch (kind) {
  case fb::KernelKind::Linear:
  case fb::KernelKind::SiluMul:
  case fb::KernelKind::Quantize:
  case fb::KernelKind::Dequantize:
  case fb::KernelKind::Reshape:
  case fb::KernelKind::Convert:
    return true;
  default:
    return false;
  }
}

struct Analysis {
  const fb::Model &model;
  FunctionUses uses;
  std::map<uint32_t, int> position;

  Analysis(const fb::Model &model, const fb::Function &function)
      : model(model), uses(model, function) {
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

  /// The side branch making operand `value` of `join` (the other operand
  /// `other`), if there is one.
  bool branchOf(uint32_t join, uint32_t value, uint32_t other,
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
          const int64_t p = producerOf(input);
          if (p >= 0 && !slice.count(uint32_t(p)))
            fork = std::max(fork, position.at(uint32_t(p)));
        }
    }
    // Work of the step's own between the fork and the join to overlap: the
    // other operand made after the fork, outside the branch.
    const int64_t otherMade = producerOf(other);
    if (!anyProduct || fork >= first || otherMade < 0 ||
        slice.count(uint32_t(otherMade)) ||
        position.at(uint32_t(otherMade)) <= fork)
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
melt::rt::findSideBranches(const fb::Model &model,
                           const fb::Function &function) {
  std::vector<SideBranch> found;
  if (!function.kernels() || !model.kernels())
    return found;
  Analysis analysis(model, function);
  for (uint32_t k : *function.kernels()) {
    const fb::Kernel &add = analysis.kernel(k);
    if (add.kind() != fb::KernelKind::Add || !add.inputs() ||
        add.inputs()->size() != 2 ||
        add.inputs()->Get(0) == add.inputs()->Get(1))
      continue;
    const uint32_t a = add.inputs()->Get(0), b = add.inputs()->Get(1);
    SideBranch branch;
    if (analysis.branchOf(k, b, a, function, branch) ||
        analysis.branchOf(k, a, b, function, branch))
      found.push_back(std::move(branch));
  }
  return found;
}
