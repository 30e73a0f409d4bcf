//===- MlaQueryFusions.cpp - an MLA's query split and rope in its call ----===//
#include "MlaQueryFusions.h"

#include "FunctionUses.h"

using namespace melt;
using namespace melt::rt;

std::vector<MlaQueryFusion>
melt::rt::findMlaQueryFusions(const fb::Model &model,
                              const fb::Function &function) {
  std::vector<MlaQueryFusion> found;
  if (!function.kernels() || !model.kernels() || !model.buffers())
    return found;
  FunctionUses uses(model, function);
  auto kernelAt = [&](uint32_t k) -> const fb::Kernel & {
    return *model.kernels()->Get(k);
  };
  // Kernel k, of `kind`, made `value` as its output i; `value` read by
  // `reader` alone and no output of the function.
  auto feedsOnly = [&](uint32_t value, fb::KernelKind kind, uint32_t i,
                       uint32_t reader, uint32_t &k) {
    auto made = uses.producer.find(value);
    auto readers = uses.readers.find(value);
    if (made == uses.producer.end() || readers == uses.readers.end() ||
        readers->second.size() != 1 || readers->second[0] != reader ||
        uses.outputs.count(value))
      return false;
    k = made->second;
    const fb::Kernel &kernel = kernelAt(k);
    return kernel.kind() == kind && kernel.outputs() &&
           kernel.outputs()->size() > i && kernel.outputs()->Get(i) == value;
  };
  for (uint32_t m : *function.kernels()) {
    const fb::Kernel &mla = kernelAt(m);
    if (mla.kind() != fb::KernelKind::MLA || !mla.inputs() ||
        mla.inputs()->size() < 4)
      continue;
    MlaQueryFusion f;
    f.mla = m;
    uint32_t ropeSplit = 0;
    if (!feedsOnly(mla.inputs()->Get(0), fb::KernelKind::Split, 0, m,
                   f.split) ||
        !feedsOnly(mla.inputs()->Get(1), fb::KernelKind::Rope, 0, m, f.rope))
      continue;
    const fb::Kernel &split = kernelAt(f.split), &rope = kernelAt(f.rope);
    if (!rope.inputs() || rope.inputs()->size() != 2 ||
        rope.inputs()->Get(1) != mla.inputs()->Get(3) ||
        !feedsOnly(rope.inputs()->Get(0), fb::KernelKind::Split, 1, f.rope,
                   ropeSplit) ||
        ropeSplit != f.split || !split.inputs() ||
        split.inputs()->size() != 1 || split.outputs()->size() != 2 ||
        !split.ints() || split.ints()->size() < 1)
      continue;
    // Along the last axis of a 3-D value ([T, H, nope + rope]).
    const fb::Buffer *q = model.buffers()->Get(split.inputs()->Get(0));
    if (!q || !q->shape() || q->shape()->size() != 3 ||
        split.ints()->Get(0) != 2)
      continue;
    found.push_back(f);
  }
  return found;
}
