//===- Bf16Products.cpp - products kept in BF16 ---------------------------===//
#include "Bf16Products.h"

#include "FunctionUses.h"

using namespace melt;
using namespace melt::rt;

namespace {

struct Search {
  const fb::Model &model;
  const FunctionUses &uses;
  const std::set<uint32_t> &excluded, &excludedValues;
  const std::function<bool(uint32_t kernel)> &readsBf16;

  /// Whether every reader of `value` reads it as BF16 (splits and reshapes
  /// by their values' readers).
  bool readAsBf16(uint32_t value) const {
    auto readers = uses.readers.find(value);
    if (uses.outputs.count(value) || excludedValues.count(value) ||
        readers == uses.readers.end() || readers->second.empty())
      return false;
    for (uint32_t reader : readers->second) {
      const fb::Kernel &kernel = *model.kernels()->Get(reader);
      if (excluded.count(reader))
        return false;
      const fb::KernelKind kind = kernel.kind();
      if (kind == fb::KernelKind::Split || kind == fb::KernelKind::Reshape) {
        if (!kernel.outputs() || kernel.outputs()->size() == 0)
          return false;
        for (uint32_t part : *kernel.outputs())
          if (!readAsBf16(part))
            return false;
      } else if (!readsBf16(reader)) {
        return false;
      }
    }
    return true;
  }
};

} // namespace

std::set<uint32_t> melt::rt::findBf16Products(
    const fb::Model &model, const fb::Function &function,
    const std::set<uint32_t> &excluded,
    const std::set<uint32_t> &excludedValues,
    const std::function<bool(uint32_t kernel)> &readsBf16,
    const std::function<bool(uint32_t kernel)> &writesBf16) {
  std::set<uint32_t> found;
  if (!function.kernels() || !model.kernels())
    return found;
  FunctionUses uses(model, function);
  const Search search{model, uses, excluded, excludedValues, readsBf16};
  for (uint32_t k : *function.kernels()) {
    const fb::Kernel &linear = *model.kernels()->Get(k);
    // A BF16 output precision (rounded, or one the runtime may keep in
    // F32).
    if (linear.kind() != fb::KernelKind::Linear || excluded.count(k) ||
        !linear.weights() || linear.weights()->size() != 1 ||
        linearOutputOf(linear) == LinearOutput::F32 || !linear.outputs() ||
        linear.outputs()->size() != 1)
      continue;
    if (search.readAsBf16(linear.outputs()->Get(0)) && writesBf16(k))
      found.insert(k);
  }
  return found;
}
