//===- NormProductFusions.cpp - norms that prepare their products' input --===//
#include "NormProductFusions.h"

#include "FunctionUses.h"
#include "ProductReaders.h"

using namespace melt;
using namespace melt::rt;

std::vector<NormProductFusion> melt::rt::findNormProductFusions(
    const fb::Model &model, const fb::Function &function,
    const std::vector<QuantizeFold> &folds,
    const std::function<bool(uint32_t kernel)> &fuses) {
  std::vector<NormProductFusion> fusions;
  if (!function.kernels() || !model.kernels())
    return fusions;
  FunctionUses uses(model, function);
  for (uint32_t k : *function.kernels()) {
    const fb::Kernel &norm = *model.kernels()->Get(k);
    if (norm.kind() != fb::KernelKind::RMSNorm || !norm.inputs() ||
        norm.inputs()->size() != 1 || !norm.outputs() ||
        norm.outputs()->size() != 1 || !norm.weights() ||
        norm.weights()->size() != 1)
      continue;
    std::vector<uint32_t> products =
        fusingProductsOf(model, uses, folds, norm.outputs()->Get(0), fuses);
    if (!products.empty())
      fusions.push_back({k, std::move(products)});
  }
  return fusions;
}
