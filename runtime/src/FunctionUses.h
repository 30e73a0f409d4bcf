//===- FunctionUses.h - who reads each buffer of a function ---*- C++ -*-===//
//
// For the executor's analyses of @forward (QuantizeFolds.h,
// SiluMulFusions.h): each buffer's producing kernel and readers within the
// function, and the function's outputs.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_FUNCTIONUSES_H
#define MELT_RUNTIME_FUNCTIONUSES_H

#include "Artifact.h"

#include <cstdint>
#include <map>
#include <set>
#include <vector>

namespace melt::rt {

struct FunctionUses {
  FunctionUses(const fb::Model &model, const fb::Function &function) {
    if (function.kernels() && model.kernels())
      for (uint32_t k : *function.kernels()) {
        const fb::Kernel &kernel = *model.kernels()->Get(k);
        if (kernel.outputs())
          for (uint32_t b : *kernel.outputs())
            producer[b] = k;
        if (kernel.inputs())
          for (uint32_t b : *kernel.inputs())
            readers[b].push_back(k);
      }
    if (function.outputs())
      outputs.insert(function.outputs()->begin(), function.outputs()->end());
  }
  /// The kernels reading buffer `value` (none: empty).
  const std::vector<uint32_t> &readersOf(uint32_t value) const {
    static const std::vector<uint32_t> none;
    auto it = readers.find(value);
    return it == readers.end() ? none : it->second;
  }
  std::map<uint32_t, uint32_t> producer;
  std::map<uint32_t, std::vector<uint32_t>> readers;
  std::set<uint32_t> outputs;
};

} // namespace melt::rt

#endif // MELT_RUNTIME_FUNCTIONUSES_H
