//===- Executor.h - runs a function of the program --------------*- C++ -*-===//
#ifndef MELT_RUNTIME_EXECUTOR_H
#define MELT_RUNTIME_EXECUTOR_H

#include "Model.h"

#include <map>

namespace melt {

/// The caches of one sequence, by cache buffer.
using CacheSet = std::map<uint32_t, KVStore>;

/// Runs `function` on the CPU: `inputs` bind the function's non-cache
/// inputs in order, `caches` its cache inputs (created on first use);
/// `outputs` receives its non-cache outputs in order.
Status execute(const Model &model, const fb::Function &function,
               std::vector<Tensor> inputs, CacheSet &caches,
               int64_t maxPositions, std::vector<Tensor> &outputs);

} // namespace melt

#endif // MELT_RUNTIME_EXECUTOR_H
