//===- Executor.h - runs a function of the program --------------*- C++ -*-===//
#ifndef MELT_RUNTIME_EXECUTOR_H
#define MELT_RUNTIME_EXECUTOR_H

#include "Model.h"

#include <map>

namespace melt {

/// The caches of one sequence, by cache buffer.
using CacheSet = std::map<uint32_t, KVStore>;

/// How many token-to-expert assignments each router made, by router kernel
/// and expert: the statistics expert placement plans from.
using ExpertLoad = std::map<uint32_t, std::vector<uint64_t>>;

/// Runs `function` on the CPU: `inputs` bind the function's non-cache
/// inputs in order, `caches` its cache inputs (created on first use);
/// `outputs` receives its non-cache outputs in order.
Status execute(const Model &model, const fb::Function &function,
               std::vector<Tensor> inputs, CacheSet &caches,
               int64_t maxPositions, std::vector<Tensor> &outputs,
               ExpertLoad *load = nullptr);

} // namespace melt

#endif // MELT_RUNTIME_EXECUTOR_H
