//===- QuantizeFolds.cpp - activation quantization a product does itself --===//
#include "QuantizeFolds.h"

#include "FunctionUses.h"

#include <algorithm>
#include <map>
#include <set>

using namespace melt;
using namespace melt::rt;

namespace {

/// A Quantize or Dequantize kernel of 1 x 128 blocks (ints: the block).
bool oneBy128(const fb::Kernel &kernel) {
  const auto *ints = kernel.ints();
  return ints && ints->size() == 2 && ints->Get(0) == 1 && ints->Get(1) == 128;
}

} // namespace

std::vector<QuantizeFold> melt::rt::findQuantizeFolds(
    const fb::Model &model, const fb::Function &function,
    const std::function<bool(uint32_t kernel)> &quantizesInput) {
  std::vector<QuantizeFold> folds;
  if (!function.kernels() || !model.kernels())
    return folds;
  FunctionUses uses(model, function);
  auto &producer = uses.producer;
  auto &readers = uses.readers;
  const auto &outputs = uses.outputs;
  auto onlyReader = [&](uint32_t buffer, uint32_t kernel) {
    const std::vector<uint32_t> &r = readers[buffer];
    return !outputs.count(buffer) && !r.empty() &&
           std::all_of(r.begin(), r.end(),
                       [&](uint32_t k) { return k == kernel; });
  };
  for (uint32_t d : *function.kernels()) {
    const fb::Kernel &dequantize = *model.kernels()->Get(d);
    if (dequantize.kind() != fb::KernelKind::Dequantize ||
        !oneBy128(dequantize) || !dequantize.inputs() ||
        dequantize.inputs()->size() != 2 || !dequantize.outputs() ||
        dequantize.outputs()->size() != 1)
      continue;
    // Both inputs (codes, scales) are one quantize's outputs, read by
    // this dequantize alone.
    auto codes = producer.find(dequantize.inputs()->Get(0));
    auto scales = producer.find(dequantize.inputs()->Get(1));
    if (codes == producer.end() || scales == producer.end() ||
        codes->second != scales->second)
      continue;
    const uint32_t q = codes->second;
    const fb::Kernel &quantize = *model.kernels()->Get(q);
    if (quantize.kind() != fb::KernelKind::Quantize || !oneBy128(quantize) ||
        !quantize.inputs() || quantize.inputs()->size() != 1 ||
        !quantize.outputs() || quantize.outputs()->size() != 2 ||
        quantize.outputs()->Get(0) != dequantize.inputs()->Get(0) ||
        quantize.outputs()->Get(1) != dequantize.inputs()->Get(1) ||
        !onlyReader(quantize.outputs()->Get(0), d) ||
        !onlyReader(quantize.outputs()->Get(1), d))
      continue;
    // x itself a value of the function (made by one of its kernels).
    const uint32_t source = quantize.inputs()->Get(0);
    if (!producer.count(source))
      continue;
    // Every reader of the dequantized value a product that quantizes its
    // input itself.
    const uint32_t value = dequantize.outputs()->Get(0);
    const std::vector<uint32_t> &r = readers[value];
    bool fold = !outputs.count(value) && !r.empty();
    for (uint32_t k : r) {
      const fb::Kernel &reader = *model.kernels()->Get(k);
      const bool product = reader.kind() == fb::KernelKind::Linear ||
                           reader.kind() == fb::KernelKind::MoEExperts;
      fold = fold && product && reader.inputs() &&
             reader.inputs()->Get(0) == value && quantizesInput(k);
    }
    if (fold)
      folds.push_back({q, d, source});
  }
  return folds;
}
