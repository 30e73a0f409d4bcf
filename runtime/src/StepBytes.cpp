//===- StepBytes.cpp - the weight bytes a decode step reads ---------------===//
#include "StepBytes.h"

#include "KernelArgs.h"

#include <algorithm>
#include <map>

using namespace melt::rt;

namespace {

enum class Kept { F32, BF16, FP8Blocks };

/// The precision policy's (melt-assign-precision's storage), not the form
/// a device keeps for its kernels: a roofline of the policy's bytes, which
/// a device reading wider copies does not raise.
Kept keptAs(const fb::Weight &w) {
  if (w.storage() == 2)
    return Kept::FP8Blocks;
  if (w.storage() == 1 || w.dtype() == fb::DType::BF16 ||
      w.dtype() == fb::DType::F16)
    return Kept::BF16;
  if (w.dtype() == fb::DType::F8E4M3FN)
    return Kept::FP8Blocks;
  return Kept::F32;
}

uint64_t bytesOf(const fb::Weight &w) {
  if (!w.shape())
    return 0;
  uint64_t elements = 1;
  for (int64_t d : *w.shape())
    elements *= uint64_t(d > 0 ? d : 0);
  switch (keptAs(w)) {
  case Kept::F32:
    return 4 * elements;
  case Kept::BF16:
    return 2 * elements;
  case Kept::FP8Blocks:
    break;
  }
  // A scale a 128x128 block of each matrix of the last two dims.
  const size_t rank = w.shape()->size();
  if (rank < 2)
    return elements;
  const uint64_t rows = uint64_t(w.shape()->Get(rank - 2)),
                 cols = uint64_t(w.shape()->Get(rank - 1));
  const uint64_t matrices = rows && cols ? elements / (rows * cols) : 0;
  return elements + 4 * matrices * ((rows + 127) / 128) * ((cols + 127) / 128);
}

} // namespace

uint64_t melt::rt::decodeStepWeightBytes(const Artifact &artifact) {
  const fb::Function *forward = artifact.function("forward");
  if (!forward || !forward->kernels())
    return 0;
  const fb::Model &m = artifact.model();
  // Top k of each router's choices, by the buffer holding them.
  std::map<uint32_t, int64_t> topKOfChoices;
  for (uint32_t k : *forward->kernels()) {
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    if (kernel.kind() == fb::KernelKind::MoERouter && kernel.outputs() &&
        kernel.outputs()->size() > 0)
      topKOfChoices[kernel.outputs()->Get(0)] = routerParamsOf(kernel).topK;
  }
  // The share of each weight read (the largest over its kernels: a table
  // both embedded and multiplied, tied, is read whole).
  std::map<uint32_t, double> shareOf;
  for (uint32_t k : *forward->kernels()) {
    const fb::Kernel &kernel = *m.kernels()->Get(k);
    if (!kernel.weights())
      continue;
    for (uint32_t w : *kernel.weights()) {
      const fb::Weight &weight = *m.weights()->Get(w);
      const int64_t first = weight.shape() && weight.shape()->size() > 0
                                ? weight.shape()->Get(0)
                                : 1;
      double share = 1.0;
      if (kernel.kind() == fb::KernelKind::Embedding && first > 0) {
        share = 1.0 / double(first); // a row of the table
      } else if (kernel.kind() == fb::KernelKind::MoEExperts && first > 0 &&
                 kernel.inputs() && kernel.inputs()->size() > 1) {
        // [experts, ...]: the k the token picks.
        auto topK = topKOfChoices.find(kernel.inputs()->Get(1));
        if (topK != topKOfChoices.end() && topK->second < first)
          share = double(topK->second) / double(first);
      }
      double &kept = shareOf[w];
      kept = std::max(kept, share);
    }
  }
  double bytes = 0;
  for (const auto &[w, share] : shareOf)
    bytes += double(bytesOf(*m.weights()->Get(w))) * share;
  return uint64_t(bytes + 0.5);
}
