//===- CombineNormFusions.h - a MoE layer's combine in the next norm ------===//
//
// A MoE layer ends in its combine: each token's expert rows weighted and
// summed (with a shared expert's row added), written as the layer's
// output, which the residual add of the next norm reads back at once. At
// a prefill's many tokens those rows are F32 and large (mini's 8x1024: 67
// MB written and read again a layer). Where the output has no other
// reader, the add's norm can make the rows itself from the experts' rows
// (Device::leaveCombineToNorm): the same sums, neither the write nor the
// read.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_COMBINENORMFUSIONS_H
#define MELT_RUNTIME_COMBINENORMFUSIONS_H

#include "Artifact.h"

#include <cstdint>
#include <set>

namespace melt::rt {

/// The values of `function` that a MoE layer's experts make (a MoEExperts
/// kernel's output, or the Add of it and a shared expert's output) and
/// that nothing reads but one Add whose sum an RMSNorm (one weight, one
/// epsilon) reads right after it in the function's order: the executor's
/// add-and-norm call. None is an output of the function.
std::set<uint32_t> findCombinesInNorm(const fb::Model &model,
                                      const fb::Function &function);

} // namespace melt::rt

#endif // MELT_RUNTIME_COMBINENORMFUSIONS_H
