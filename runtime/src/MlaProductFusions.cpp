//===- MlaProductFusions.cpp - MLA outputs prepared for their products ----===//
#include "MlaProductFusions.h"

#include "FunctionUses.h"
#include "ProductReaders.h"

using namespace melt;
using namespace melt::rt;

std::vector<MlaProductFusion> melt::rt::findMlaProductFusions(
    const fb::Model &model, const fb::Function &function,
    const std::vector<QuantizeFold> &folds,
    const std::function<bool(uint32_t kernel)> &fuses) {
  std::vector<MlaProductFusion> fusions;
  if (!function.kernels() || !model.kernels())
    return fusions;
  FunctionUses uses(model, function);
  for (uint32_t k : *function.kernels()) {
    const fb::Kernel &mla = *model.kernels()->Get(k);
    if (mla.kind() != fb::KernelKind::MLA || !mla.outputs() ||
        mla.outputs()->size() != 1)
      continue;
    uint32_t value = mla.outputs()->Get(0), view = UINT32_MAX;
    if (uses.outputs.count(value))
      continue;
    // Through the Reshape of the heads into one row, where that is all
    // that reads it (a view of the same memory).
    const std::vector<uint32_t> &readers = uses.readersOf(value);
    if (readers.size() == 1) {
      const fb::Kernel &reshape = *model.kernels()->Get(readers.front());
      if (reshape.kind() == fb::KernelKind::Reshape && reshape.inputs() &&
          reshape.inputs()->size() == 1 && reshape.outputs() &&
          reshape.outputs()->size() == 1)
        value = view = reshape.outputs()->Get(0);
    }
    std::vector<uint32_t> products =
        fusingProductsOf(model, uses, folds, value, fuses);
    if (!products.empty())
      fusions.push_back({k, std::move(products), view});
  }
  return fusions;
}
