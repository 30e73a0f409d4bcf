//===- CombineNormFusions.cpp - a MoE layer's combine in the next norm ----===//
#include "CombineNormFusions.h"

#include "FunctionUses.h"

using namespace melt;
using namespace melt::rt;

std::set<uint32_t> melt::rt::findCombinesInNorm(const fb::Model &model,
                                                const fb::Function &function) {
  std::set<uint32_t> found;
  if (!function.kernels() || !model.kernels())
    return found;
  FunctionUses uses(model, function);
  const auto &order = *function.kernels();
  auto kernelAt = [&](uint32_t k) -> const fb::Kernel & {
    return *model.kernels()->Get(k);
  };
  // Whether a kernel of this kind makes `value`.
  auto madeBy = [&](uint32_t value, fb::KernelKind kind) {
    auto made = uses.producer.find(value);
    return made != uses.producer.end() && kernelAt(made->second).kind() == kind;
  };
  // What a MoE layer's experts make: a MoEExperts kernel's output, or an
  // Add of one (its shared expert's output beside it).
  auto madeByExperts = [&](uint32_t value) {
    if (madeBy(value, fb::KernelKind::MoEExperts))
      return true;
    if (!madeBy(value, fb::KernelKind::Add))
      return false;
    const fb::Kernel &add = kernelAt(uses.producer.at(value));
    if (!add.inputs())
      return false;
    for (uint32_t in : *add.inputs())
      if (madeBy(in, fb::KernelKind::MoEExperts))
        return true;
    return false;
  };
  for (uint32_t at = 0; at + 1 < order.size(); ++at) {
    const uint32_t a = order.Get(at);
    const fb::Kernel &add = kernelAt(a), &norm = kernelAt(order.Get(at + 1));
    if (add.kind() != fb::KernelKind::Add || !add.inputs() ||
        add.inputs()->size() != 2 || !add.outputs() ||
        add.outputs()->size() != 1 || norm.kind() != fb::KernelKind::RMSNorm ||
        !norm.inputs() || norm.inputs()->size() != 1 ||
        norm.inputs()->Get(0) != add.outputs()->Get(0) || !norm.weights() ||
        norm.weights()->size() != 1 || !norm.floats() ||
        norm.floats()->size() != 1)
      continue;
    for (uint32_t value : *add.inputs()) {
      const std::vector<uint32_t> &readers = uses.readersOf(value);
      if (readers.size() == 1 && readers[0] == a &&
          !uses.outputs.count(value) && madeByExperts(value))
        found.insert(value);
    }
  }
  return found;
}
