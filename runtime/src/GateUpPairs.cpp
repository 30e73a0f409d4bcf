//===- GateUpPairs.cpp - an MLP's gate, up and SiLU-mul as one call -------===//
#include "GateUpPairs.h"

#include "FunctionUses.h"

using namespace melt::rt;

std::vector<GateUpPair>
melt::rt::findGateUpPairs(const fb::Model &model,
                          const fb::Function &function) {
  std::vector<GateUpPair> pairs;
  const auto *kernels = function.kernels();
  if (!kernels || !model.kernels())
    return pairs;
  FunctionUses uses(model, function);
  const uint32_t count = model.kernels()->size();
  auto linearOfOneWeight = [&](uint32_t k) {
    const fb::Kernel &kernel = *model.kernels()->Get(k);
    return kernel.kind() == fb::KernelKind::Linear && kernel.inputs() &&
           kernel.inputs()->size() == 1 && kernel.outputs() &&
           kernel.outputs()->size() == 1 && kernel.weights() &&
           kernel.weights()->size() == 1;
  };
  for (uint32_t at = 2; at < kernels->size(); ++at) {
    const uint32_t s = kernels->Get(at), first = kernels->Get(at - 2),
                   second = kernels->Get(at - 1);
    if (s >= count || first >= count || second >= count)
      continue;
    const fb::Kernel &silu = *model.kernels()->Get(s);
    if (silu.kind() != fb::KernelKind::SiluMul || !silu.inputs() ||
        silu.inputs()->size() != 2)
      continue;
    if (!linearOfOneWeight(first) || !linearOfOneWeight(second))
      continue;
    const uint32_t gate = silu.inputs()->Get(0), up = silu.inputs()->Get(1);
    auto made = [&](uint32_t k) {
      return model.kernels()->Get(k)->outputs()->Get(0);
    };
    auto x = [&](uint32_t k) {
      return model.kernels()->Get(k)->inputs()->Get(0);
    };
    const bool gateFirst = made(first) == gate && made(second) == up,
               upFirst = made(first) == up && made(second) == gate;
    if ((!gateFirst && !upFirst) || gate == up || x(first) != x(second) ||
        uses.outputs.count(gate) || uses.outputs.count(up) ||
        uses.readersOf(gate).size() != 1 || uses.readersOf(up).size() != 1)
      continue;
    pairs.push_back(gateFirst ? GateUpPair{first, second, s, first}
                              : GateUpPair{second, first, s, first});
  }
  return pairs;
}
