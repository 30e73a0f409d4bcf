//===- LatentAppends.cpp - MLA's latent append with its norm and rope -----===//
#include "LatentAppends.h"

#include "FunctionUses.h"

using namespace melt;
using namespace melt::rt;

std::vector<LatentAppend>
melt::rt::findLatentAppends(const fb::Model &model,
                            const fb::Function &function) {
  std::vector<LatentAppend> found;
  if (!function.kernels() || !model.kernels())
    return found;
  FunctionUses uses(model, function);
  const auto &order = *function.kernels();
  auto kernelAt = [&](uint32_t k) -> const fb::Kernel & {
    return *model.kernels()->Get(k);
  };
  // `value` made by kernel k (its one output) and read by `append` alone.
  auto feedsOnly = [&](uint32_t k, uint32_t value, uint32_t append) {
    const fb::Kernel &kernel = kernelAt(k);
    auto readers = uses.readers.find(value);
    return kernel.outputs() && kernel.outputs()->size() == 1 &&
           kernel.outputs()->Get(0) == value && !uses.outputs.count(value) &&
           readers != uses.readers.end() && readers->second.size() == 1 &&
           readers->second[0] == append;
  };
  for (uint32_t at = 2; at < order.size(); ++at) {
    const uint32_t a = order.Get(at);
    const fb::Kernel &append = kernelAt(a);
    if (append.kind() != fb::KernelKind::LatentCacheAppend ||
        !append.inputs() || append.inputs()->size() < 3)
      continue;
    const uint32_t latent = append.inputs()->Get(1),
                   key = append.inputs()->Get(2);
    uint32_t norm = order.Get(at - 2), rope = order.Get(at - 1);
    if (kernelAt(norm).kind() == fb::KernelKind::Rope)
      std::swap(norm, rope);
    const fb::Kernel &n = kernelAt(norm), &r = kernelAt(rope);
    if (n.kind() != fb::KernelKind::RMSNorm ||
        r.kind() != fb::KernelKind::Rope || !n.inputs() ||
        n.inputs()->size() != 1 || !n.weights() || n.weights()->size() != 1 ||
        !n.floats() || n.floats()->size() != 1 || !r.inputs() ||
        r.inputs()->size() != 2 || !feedsOnly(norm, latent, a) ||
        !feedsOnly(rope, key, a))
      continue;
    found.push_back({norm, rope, a});
  }
  return found;
}
