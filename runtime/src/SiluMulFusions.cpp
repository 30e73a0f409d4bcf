//===- SiluMulFusions.cpp - MLP SiLU-muls folded into their products ------===//
#include "SiluMulFusions.h"

#include "FunctionUses.h"

#include <map>
#include <set>

using namespace melt;
using namespace melt::rt;

std::vector<SiluMulFusion> melt::rt::findSiluMulFusions(
    const fb::Model &model, const fb::Function &function,
    const std::vector<QuantizeFold> &folds,
    const std::function<bool(uint32_t kernel)> &fuses) {
  std::vector<SiluMulFusion> fusions;
  if (!function.kernels() || !model.kernels())
    return fusions;
  FunctionUses uses(model, function);
  auto &readers = uses.readers;
  const auto &outputs = uses.outputs;
  std::map<uint32_t, const QuantizeFold *> foldOf; // by its quantize
  for (const QuantizeFold &f : folds)
    foldOf[f.quantize] = &f;
  // A Linear kernel that takes `value` as its x and fuses.
  auto fusingProduct = [&](uint32_t k, uint32_t value) {
    const fb::Kernel &kernel = *model.kernels()->Get(k);
    return kernel.kind() == fb::KernelKind::Linear && kernel.inputs() &&
           kernel.inputs()->size() == 1 && kernel.inputs()->Get(0) == value &&
           fuses(k);
  };
  for (uint32_t s : *function.kernels()) {
    const fb::Kernel &silu = *model.kernels()->Get(s);
    if (silu.kind() != fb::KernelKind::SiluMul || !silu.inputs() ||
        silu.inputs()->size() != 2 || !silu.outputs() ||
        silu.outputs()->size() != 1)
      continue;
    const uint32_t gate = silu.inputs()->Get(0), up = silu.inputs()->Get(1);
    const uint32_t value = silu.outputs()->Get(0);
    bool fuse = gate != up && !outputs.count(gate) && !outputs.count(up) &&
                !outputs.count(value) && readers[gate].size() == 1 &&
                readers[up].size() == 1 && !readers[value].empty();
    uint32_t products = 0;
    for (uint32_t k : readers[value]) {
      if (!fuse)
        break;
      if (fusingProduct(k, value)) {
        ++products;
        continue;
      }
      // A folded quantize pair: its dequantized value's readers.
      auto fold = foldOf.find(k);
      if (fold == foldOf.end() || fold->second->source != value) {
        fuse = false;
        break;
      }
      const fb::Kernel &dequantize =
          *model.kernels()->Get(fold->second->dequantize);
      const uint32_t stands = dequantize.outputs()->Get(0);
      for (uint32_t r : readers[stands]) {
        fuse = fuse && fusingProduct(r, stands);
        ++products;
      }
    }
    if (fuse && products > 0)
      fusions.push_back({s, products});
  }
  return fusions;
}
