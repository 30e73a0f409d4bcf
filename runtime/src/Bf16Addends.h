//===- Bf16Addends.h - products whose value only adds read -------*- C++
//-*-===//
//
// A linear whose precision's output is BF16 (an FP8 or BF16 product) and
// whose value only Add kernels read (attention's o_proj, a dense MLP's
// down_proj: the residual stream's addends) is stored in F32 by default,
// every value a BF16 one widened: a GPU's FP8 GEMM writes BF16 and a
// kernel widens it, and the add reads twice the bytes it needs. A device
// that writes such a product in BF16 and adds a BF16 operand
// (Device::linearWritesBf16) keeps the value in BF16 instead: the same
// values, the widening kernel left out.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_BF16ADDENDS_H
#define MELT_RUNTIME_BF16ADDENDS_H

#include "Artifact.h"

#include <cstdint>
#include <functional>
#include <set>

namespace melt::rt {

/// The Linear kernels of `function` (one weight, a BF16 output precision)
/// whose value is no output of the function and is read by Add kernels
/// only, past those in `excluded` (kernels another fusion runs in its own
/// call) and those for which `takes(kernel)` does not hold.
std::set<uint32_t>
findBf16Addends(const fb::Model &model, const fb::Function &function,
                const std::set<uint32_t> &excluded,
                const std::function<bool(uint32_t kernel)> &takes);

} // namespace melt::rt

#endif // MELT_RUNTIME_BF16ADDENDS_H
