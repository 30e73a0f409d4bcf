//===- NormProductFusions.cpp - norms that prepare their products' input --===//
#include "NormProductFusions.h"

#include "FunctionUses.h"
#include "ProductReaders.h"

using namespace melt;
using namespace melt::rt;

namespace {

/// An RMSNorm of one input into one output with its one weight.
bool isPlainRmsNorm(const fb::Kernel &norm) {
  return norm.kind() == fb::KernelKind::RMSNorm && norm.inputs() &&
         norm.inputs()->size() == 1 && norm.outputs() &&
         norm.outputs()->size() == 1 && norm.weights() &&
         norm.weights()->size() == 1;
}

} // namespace

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
    if (!isPlainRmsNorm(norm))
      continue;
    std::vector<uint32_t> products =
        fusingProductsOf(model, uses, folds, norm.outputs()->Get(0), fuses);
    if (!products.empty())
      fusions.push_back({k, std::move(products)});
  }
  return fusions;
}

std::vector<NormExpertFusion>
melt::rt::findNormExpertFusions(const fb::Model &model,
                                const fb::Function &function,
                                const std::vector<QuantizeFold> &folds) {
  std::vector<NormExpertFusion> fusions;
  if (!function.kernels() || !model.kernels())
    return fusions;
  FunctionUses uses(model, function);
  // Kernel k of `kind` whose first input is `value`.
  auto readsAsX = [&](uint32_t k, fb::KernelKind kind, uint32_t value) {
    const fb::Kernel &kernel = *model.kernels()->Get(k);
    return kernel.kind() == kind && kernel.inputs() &&
           kernel.inputs()->size() > 0 && kernel.inputs()->Get(0) == value;
  };
  for (uint32_t k : *function.kernels()) {
    const fb::Kernel &norm = *model.kernels()->Get(k);
    if (!isPlainRmsNorm(norm))
      continue;
    const uint32_t value = norm.outputs()->Get(0);
    if (uses.outputs.count(value))
      continue;
    std::vector<uint32_t> routers, experts, others;
    for (uint32_t r : uses.readersOf(value)) {
      if (readsAsX(r, fb::KernelKind::MoERouter, value)) {
        routers.push_back(r);
        continue;
      }
      if (readsAsX(r, fb::KernelKind::MoEExperts, value)) {
        experts.push_back(r);
        continue;
      }
      // Through a folded quantize pair: the dequantized value's experts.
      bool folded = false;
      for (const QuantizeFold &f : folds)
        if (f.quantize == r && f.source == value) {
          folded = true;
          const uint32_t stands =
              model.kernels()->Get(f.dequantize)->outputs()->Get(0);
          for (uint32_t e : uses.readersOf(stands))
            (readsAsX(e, fb::KernelKind::MoEExperts, stands) ? experts : others)
                .push_back(e);
          if (uses.outputs.count(stands)) // (read after the function)
            others.push_back(UINT32_MAX);
        }
      if (!folded)
        others.push_back(r);
    }
    if (routers.size() == 1 && experts.size() == 1)
      fusions.push_back({k, routers.front(), experts.front(), others});
  }
  return fusions;
}
