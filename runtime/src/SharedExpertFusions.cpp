//===- SharedExpertFusions.cpp - a shared expert in the routed experts' call =//
#include "SharedExpertFusions.h"

#include "FunctionUses.h"

#include <algorithm>
#include <map>

using namespace melt;
using namespace melt::rt;

std::vector<SharedExpertFusion>
melt::rt::findSharedExpertFusions(const fb::Model &model,
                                  const fb::Function &function,
                                  const std::vector<QuantizeFold> &folds) {
  std::vector<SharedExpertFusion> found;
  if (!function.kernels() || !model.kernels())
    return found;
  FunctionUses uses(model, function);
  auto kernelAt = [&](uint32_t k) -> const fb::Kernel & {
    return *model.kernels()->Get(k);
  };
  // The one output of kernel k, or UINT32_MAX.
  auto outputOf = [&](uint32_t k) {
    const fb::Kernel &kernel = kernelAt(k);
    return kernel.outputs() && kernel.outputs()->size() == 1
               ? kernel.outputs()->Get(0)
               : UINT32_MAX;
  };
  // `value`'s one reader, where it has exactly one and is no output.
  auto onlyReader = [&](uint32_t value) {
    auto it = uses.readers.find(value);
    return it != uses.readers.end() && it->second.size() == 1 &&
                   !uses.outputs.count(value)
               ? it->second[0]
               : UINT32_MAX;
  };
  auto linearOf = [&](uint32_t k, uint32_t value) {
    const fb::Kernel &kernel = kernelAt(k);
    return kernel.kind() == fb::KernelKind::Linear && kernel.inputs() &&
           kernel.inputs()->size() == 1 && kernel.inputs()->Get(0) == value &&
           kernel.weights() && kernel.weights()->size() == 1 &&
           outputOf(k) != UINT32_MAX;
  };
  std::map<uint32_t, size_t> position;
  for (uint32_t at = 0; at < function.kernels()->size(); ++at)
    position[function.kernels()->Get(at)] = at;

  for (uint32_t e : *function.kernels()) {
    const fb::Kernel &experts = kernelAt(e);
    if (experts.kind() != fb::KernelKind::MoEExperts || !experts.inputs() ||
        experts.inputs()->size() != 3 || !experts.weights() ||
        experts.weights()->size() != 3 || outputOf(e) == UINT32_MAX)
      continue;
    SharedExpertFusion f;
    f.experts = e;
    const uint32_t x = experts.inputs()->Get(0), routed = outputOf(e);
    f.add = onlyReader(routed);
    if (f.add == UINT32_MAX)
      continue;
    const fb::Kernel &add = kernelAt(f.add);
    if (add.kind() != fb::KernelKind::Add || !add.inputs() ||
        add.inputs()->size() != 2 || outputOf(f.add) == UINT32_MAX)
      continue;
    const uint32_t shared = add.inputs()->Get(0) == routed
                                ? add.inputs()->Get(1)
                                : add.inputs()->Get(0);
    auto madeBy = uses.producer.find(shared);
    if (shared == routed || madeBy == uses.producer.end() ||
        onlyReader(shared) != f.add)
      continue;
    f.down = madeBy->second;
    const fb::Kernel &down = kernelAt(f.down);
    if (down.kind() != fb::KernelKind::Linear || !down.inputs() ||
        down.inputs()->size() != 1)
      continue;
    // The down product's input: the SiLU-mul's value, or a folded pair's
    // dequantized value of it.
    uint32_t activations = down.inputs()->Get(0);
    std::vector<uint32_t> pair;
    auto made = uses.producer.find(activations);
    if (made == uses.producer.end())
      continue;
    if (kernelAt(made->second).kind() == fb::KernelKind::Dequantize) {
      const QuantizeFold *fold = nullptr;
      for (const QuantizeFold &candidate : folds)
        if (candidate.dequantize == made->second)
          fold = &candidate;
      if (!fold || onlyReader(activations) != f.down ||
          onlyReader(fold->source) != fold->quantize)
        continue;
      pair = {fold->quantize, fold->dequantize};
      activations = fold->source;
      made = uses.producer.find(activations);
      if (made == uses.producer.end())
        continue;
    } else if (onlyReader(activations) != f.down) {
      continue;
    }
    f.siluMul = made->second;
    const fb::Kernel &silu = kernelAt(f.siluMul);
    if (silu.kind() != fb::KernelKind::SiluMul || !silu.inputs() ||
        silu.inputs()->size() != 2 || outputOf(f.siluMul) != activations)
      continue;
    const uint32_t gateValue = silu.inputs()->Get(0),
                   upValue = silu.inputs()->Get(1);
    auto gateBy = uses.producer.find(gateValue),
         upBy = uses.producer.find(upValue);
    if (gateValue == upValue || gateBy == uses.producer.end() ||
        upBy == uses.producer.end() || onlyReader(gateValue) != f.siluMul ||
        onlyReader(upValue) != f.siluMul)
      continue;
    f.gate = gateBy->second;
    f.up = upBy->second;
    if (!linearOf(f.gate, x) || !linearOf(f.up, x) ||
        !linearOf(f.down, down.inputs()->Get(0)))
      continue;
    f.kernels = {f.experts, f.gate, f.up, f.siluMul, f.down, f.add};
    f.kernels.insert(f.kernels.end(), pair.begin(), pair.end());
    std::sort(f.kernels.begin(), f.kernels.end(), [&](uint32_t a, uint32_t b) {
      return position[a] < position[b];
    });
    if (position[f.kernels.back()] - position[f.kernels.front()] + 1 !=
        f.kernels.size())
      continue;
    found.push_back(std::move(f));
  }
  return found;
}
