//===- SplitPartsInPlace.cpp - Split parts read where they lie ------------===//
#include "SplitPartsInPlace.h"

#include "FunctionUses.h"

#include <algorithm>

namespace melt::rt {

std::set<uint32_t>
findSplitPartsInPlace(const fb::Model &model, const fb::Function &function,
                      const std::function<bool(uint32_t kernel)> &runsAlone,
                      const std::set<uint32_t> &excludedValues) {
  std::set<uint32_t> found;
  if (!function.kernels() || !model.kernels())
    return found;
  const FunctionUses uses(model, function);
  // Reader r of `part`, a part cut along `axis`: a norm, or a Split along
  // the same axis (its parts then cut from the pitched rows).
  auto readsInPlace = [&](uint32_t r, uint32_t part, int64_t axis) {
    const fb::Kernel &reader = *model.kernels()->Get(r);
    if (!runsAlone(r) || !reader.inputs() || reader.inputs()->size() != 1 ||
        reader.inputs()->Get(0) != part)
      return false;
    if (reader.kind() == fb::KernelKind::RMSNorm)
      return true;
    return reader.kind() == fb::KernelKind::Split && reader.ints() &&
           reader.ints()->size() >= 1 && reader.ints()->Get(0) == axis;
  };
  for (uint32_t k : *function.kernels()) {
    const fb::Kernel &split = *model.kernels()->Get(k);
    if (split.kind() != fb::KernelKind::Split || !runsAlone(k) ||
        !split.ints() || split.ints()->size() < 1 || !split.outputs())
      continue;
    const int64_t axis = split.ints()->Get(0);
    for (uint32_t part : *split.outputs()) {
      const std::vector<uint32_t> &readers = uses.readersOf(part);
      if (!readers.empty() && !uses.outputs.count(part) &&
          !excludedValues.count(part) &&
          std::all_of(readers.begin(), readers.end(),
                      [&](uint32_t r) { return readsInPlace(r, part, axis); }))
        found.insert(part);
    }
  }
  return found;
}

} // namespace melt::rt
