//===- Bf16Addends.cpp - products whose value only adds read --------------===//
#include "Bf16Addends.h"

#include "FunctionUses.h"

using namespace melt;
using namespace melt::rt;

std::set<uint32_t>
melt::rt::findBf16Addends(const fb::Model &model, const fb::Function &function,
                          const std::set<uint32_t> &excluded,
                          const std::function<bool(uint32_t kernel)> &takes) {
  std::set<uint32_t> found;
  if (!function.kernels() || !model.kernels())
    return found;
  FunctionUses uses(model, function);
  for (uint32_t k : *function.kernels()) {
    const fb::Kernel &linear = *model.kernels()->Get(k);
    // ints[0] != 0: the product's output is rounded to BF16.
    if (linear.kind() != fb::KernelKind::Linear || excluded.count(k) ||
        !linear.weights() || linear.weights()->size() != 1 || !linear.ints() ||
        linear.ints()->size() < 1 || linear.ints()->Get(0) == 0 ||
        !linear.outputs() || linear.outputs()->size() != 1)
      continue;
    const uint32_t value = linear.outputs()->Get(0);
    auto readers = uses.readers.find(value);
    if (uses.outputs.count(value) || readers == uses.readers.end() ||
        readers->second.empty())
      continue;
    bool onlyAdds = true;
    for (uint32_t reader : readers->second)
      onlyAdds &= model.kernels()->Get(reader)->kind() == fb::KernelKind::Add;
    if (onlyAdds && takes(k))
      found.insert(k);
  }
  return found;
}
