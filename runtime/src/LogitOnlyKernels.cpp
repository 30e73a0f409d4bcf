//===- LogitOnlyKernels.cpp - work only the wanted logit rows need --------===//
#include "LogitOnlyKernels.h"

#include "FunctionUses.h"

#include <vector>

namespace melt::rt {

namespace {

bool rowWise(fb::KernelKind kind) {
  switch (kind) {
  case fb::KernelKind::RMSNorm:
  case fb::KernelKind::Linear:
  case fb::KernelKind::Rope:
  case fb::KernelKind::SiluMul:
  case fb::KernelKind::Add:
  case fb::KernelKind::Split:
  case fb::KernelKind::Reshape:
  case fb::KernelKind::Convert:
  case fb::KernelKind::MoERouter:
  case fb::KernelKind::MoEExperts:
  case fb::KernelKind::MLA:
  case fb::KernelKind::Quantize:
  case fb::KernelKind::Dequantize:
    return true;
  default:
    return false;
  }
}

bool appendsToCache(fb::KernelKind kind) {
  return kind == fb::KernelKind::KVCacheAppend ||
         kind == fb::KernelKind::LatentCacheAppend;
}

/// A value with a token-row leading dimension.
bool tokenRows(const fb::Buffer &b) {
  return b.shape() && b.shape()->size() >= 1 && b.shape()->Get(0) == -1 &&
         b.kind() != fb::BufferKind::Cache;
}

} // namespace

LogitOnlyKernels findLogitOnlyKernels(const fb::Model &model,
                                      const fb::Function &function) {
  LogitOnlyKernels none, found;
  if (!function.kernels() || !model.kernels() || !model.buffers())
    return none;
  const FunctionUses uses(model, function);
  std::vector<uint32_t> order(function.kernels()->begin(),
                              function.kernels()->end());
  uint32_t logits = UINT32_MAX;
  for (uint32_t k : order)
    if (model.kernels()->Get(k)->kind() == fb::KernelKind::Logits) {
      if (logits != UINT32_MAX)
        return none;
      logits = k;
    }
  if (logits == UINT32_MAX)
    return none;
  // From the last kernel back: one is needed beyond the logits where it
  // appends to a cache, makes a cache the function returns, or is read by
  // a kernel so needed. (A session reads the logits and the caches of what
  // the function returns; not, say, the final hidden states an artifact
  // may return too.)
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    const uint32_t k = *it;
    if (k == logits)
      continue;
    const fb::Kernel &kernel = *model.kernels()->Get(k);
    bool needed = appendsToCache(kernel.kind()) || !kernel.outputs() ||
                  kernel.outputs()->size() == 0;
    if (kernel.outputs())
      for (uint32_t b : *kernel.outputs()) {
        if (uses.outputs.count(b) &&
            model.buffers()->Get(b)->kind() == fb::BufferKind::Cache)
          needed = true;
        auto readers = uses.readers.find(b);
        if (readers != uses.readers.end())
          for (uint32_t r : readers->second)
            needed |= r != logits && !found.kernels.count(r);
      }
    if (!needed)
      found.kernels.insert(k);
  }
  if (found.kernels.empty())
    return none;
  std::set<uint32_t> functionInputs;
  if (function.inputs())
    functionInputs.insert(function.inputs()->begin(), function.inputs()->end());
  for (uint32_t k : found.kernels) {
    const fb::Kernel &kernel = *model.kernels()->Get(k);
    if (!rowWise(kernel.kind()) || !kernel.outputs() || !kernel.inputs())
      return none;
    for (uint32_t b : *kernel.outputs())
      if (!tokenRows(*model.buffers()->Get(b)))
        return none;
    for (uint32_t b : *kernel.inputs()) {
      const fb::Buffer &buffer = *model.buffers()->Get(b);
      auto producer = uses.producer.find(b);
      if (producer != uses.producer.end() &&
          found.kernels.count(producer->second))
        continue;
      if (buffer.kind() == fb::BufferKind::Cache &&
          kernel.kind() == fb::KernelKind::MLA)
        continue; // read as a whole: its rows are positions, not tokens
      if (!tokenRows(buffer))
        return none;
      if (producer != uses.producer.end() &&
          (buffer.dtype() == fb::DType::F32 ||
           buffer.dtype() == fb::DType::BF16))
        found.madeBy[b] = producer->second;
      else if (producer == uses.producer.end() && functionInputs.count(b) &&
               (buffer.dtype() == fb::DType::I32 ||
                buffer.dtype() == fb::DType::I64) &&
               buffer.shape()->size() == 1)
        found.inputs.insert(b);
      else
        return none;
    }
  }
  return found;
}

} // namespace melt::rt
