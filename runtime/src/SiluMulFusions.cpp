//===- SiluMulFusions.cpp - MLP SiLU-muls folded into their products ------===//
#include "SiluMulFusions.h"

#include "FunctionUses.h"
#include "ProductReaders.h"

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
  for (uint32_t s : *function.kernels()) {
    const fb::Kernel &silu = *model.kernels()->Get(s);
    if (silu.kind() != fb::KernelKind::SiluMul || !silu.inputs() ||
        silu.inputs()->size() != 2 || !silu.outputs() ||
        silu.outputs()->size() != 1)
      continue;
    const uint32_t gate = silu.inputs()->Get(0), up = silu.inputs()->Get(1);
    const uint32_t value = silu.outputs()->Get(0);
    if (gate == up || outputs.count(gate) || outputs.count(up) ||
        readers[gate].size() != 1 || readers[up].size() != 1)
      continue;
    const std::vector<uint32_t> products =
        fusingProductsOf(model, uses, folds, value, fuses);
    if (!products.empty())
      fusions.push_back({s, uint32_t(products.size())});
  }
  return fusions;
}
