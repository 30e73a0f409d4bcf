//===- SplitPartsInPlace.h - Split parts read where they lie ---*- C++ -*-===//
//
// A prefill's joint q/kv down projection writes one [T, q_lora + kv_lora +
// rope] matrix, and a Split cuts it into the query's and the latent's
// parts: a copy each, of every row. Where a part's readers are norms and
// further Splits along the same axis, and the device reads a row pitch
// (Device::takesRowPitch), the executor leaves the part in place as a view
// whose rows lie as far apart as the source's (DeviceTensor::rowPitch).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_SPLITPARTSINPLACE_H
#define MELT_RUNTIME_SPLITPARTSINPLACE_H

#include "Artifact.h"

#include <cstdint>
#include <functional>
#include <set>

namespace melt::rt {

/// The values of `function` that are parts of a Split for which
/// `runsAlone(split)` holds, read only by RMSNorm kernels (as their one
/// input) and Splits along the same axis, each with `runsAlone` holding;
/// none of them an output of the function or in `excludedValues` (values
/// other kernels read in their own layout: the logit rows' gathers).
std::set<uint32_t>
findSplitPartsInPlace(const fb::Model &model, const fb::Function &function,
                      const std::function<bool(uint32_t kernel)> &runsAlone,
                      const std::set<uint32_t> &excludedValues);

} // namespace melt::rt

#endif // MELT_RUNTIME_SPLITPARTSINPLACE_H
