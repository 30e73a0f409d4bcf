//===- Executor.h - runs a function of the program --------------*- C++ -*-===//
#ifndef MELT_RUNTIME_EXECUTOR_H
#define MELT_RUNTIME_EXECUTOR_H

#include "Model.h"
#include "PagePool.h"

#include <map>

namespace melt::rt {

/// A batch of sequences run by one call: the token rows of each, and the
/// caches of each by cache buffer of the function.
struct Batch {
  std::vector<int64_t> segments; // rows [segments[b], segments[b + 1])
  std::vector<std::map<uint32_t, CacheView>> caches;
};

/// How many token-to-expert assignments each router made, and how often two
/// experts were chosen for the same token: the statistics expert placement
/// (melt-plan-experts) plans from.
struct RouterLoad {
  std::vector<uint64_t> counts;
  std::map<std::pair<int64_t, int64_t>, uint64_t> pairs;
};
using ExpertLoad = std::map<uint32_t, RouterLoad>;

/// Runs `function` on the CPU for a batch: `inputs` bind the function's
/// non-cache inputs in order (tokens of all sequences, concatenated), the
/// batch its cache inputs; `outputs` receives its non-cache outputs.
Status execute(const Model &model, const fb::Function &function,
               std::vector<Tensor> inputs, Batch &batch,
               std::vector<Tensor> &outputs, ExpertLoad *load = nullptr);

} // namespace melt::rt

#endif // MELT_RUNTIME_EXECUTOR_H
