//===- ProductReaders.cpp - the products a value feeds
//---------------------===//
#include "ProductReaders.h"

using namespace melt;
using namespace melt::rt;

std::vector<uint32_t>
melt::rt::fusingProductsOf(const fb::Model &model, const FunctionUses &uses,
                           const std::vector<QuantizeFold> &folds,
                           uint32_t value,
                           const std::function<bool(uint32_t kernel)> &fuses) {
  // A Linear kernel that takes `x` as its x and fuses.
  auto fusingProduct = [&](uint32_t k, uint32_t x) {
    const fb::Kernel &kernel = *model.kernels()->Get(k);
    return kernel.kind() == fb::KernelKind::Linear && kernel.inputs() &&
           kernel.inputs()->size() == 1 && kernel.inputs()->Get(0) == x &&
           fuses(k);
  };
  std::vector<uint32_t> products;
  if (uses.outputs.count(value))
    return products;
  for (uint32_t k : uses.readersOf(value)) {
    if (fusingProduct(k, value)) {
      products.push_back(k);
      continue;
    }
    // A folded quantize pair: its dequantized value's readers.
    const QuantizeFold *fold = nullptr;
    for (const QuantizeFold &f : folds)
      if (f.quantize == k && f.source == value)
        fold = &f;
    if (!fold)
      return {};
    const fb::Kernel &dequantize = *model.kernels()->Get(fold->dequantize);
    const uint32_t stands = dequantize.outputs()->Get(0);
    if (uses.outputs.count(stands))
      return {};
    for (uint32_t r : uses.readersOf(stands)) {
      if (!fusingProduct(r, stands))
        return {};
      products.push_back(r);
    }
  }
  return products;
}
