//===- RoutesInExperts.cpp - a router's choices made by its experts' call -===//
#include "RoutesInExperts.h"

#include "FunctionUses.h"

#include <map>

using namespace melt;
using namespace melt::rt;

std::set<uint32_t> melt::rt::findRoutesInExperts(const fb::Model &model,
                                                 const fb::Function &function) {
  std::set<uint32_t> found;
  if (!function.kernels() || !model.kernels())
    return found;
  FunctionUses uses(model, function);
  std::map<uint32_t, size_t> position;
  for (uint32_t at = 0; at < function.kernels()->size(); ++at)
    position[function.kernels()->Get(at)] = at;
  // `value`'s one reader, where it has exactly one and is no output.
  auto onlyReader = [&](uint32_t value) {
    const std::vector<uint32_t> &readers = uses.readersOf(value);
    return readers.size() == 1 && !uses.outputs.count(value) ? readers[0]
                                                             : UINT32_MAX;
  };
  for (uint32_t r : *function.kernels()) {
    const fb::Kernel &router = *model.kernels()->Get(r);
    if (router.kind() != fb::KernelKind::MoERouter || !router.outputs() ||
        router.outputs()->size() != 2)
      continue;
    const uint32_t choices = router.outputs()->Get(0),
                   weights = router.outputs()->Get(1);
    const uint32_t e = onlyReader(choices);
    if (e == UINT32_MAX || onlyReader(weights) != e || !position.count(e) ||
        position[e] <= position[r])
      continue;
    const fb::Kernel &experts = *model.kernels()->Get(e);
    if (experts.kind() == fb::KernelKind::MoEExperts && experts.inputs() &&
        experts.inputs()->size() == 3 && experts.inputs()->Get(1) == choices &&
        experts.inputs()->Get(2) == weights)
      found.insert(r);
  }
  return found;
}
