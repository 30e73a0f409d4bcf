//===- Bf16Products.h - products kept in BF16 -------------------*- C++ -*-===//
//
// A linear whose precision's output is BF16 has BF16 values (an FP8
// product's, rounded where the device's product kept more) or may have
// them (a BF16 product's, under the bf16 policy, which the runtime keeps
// in F32 unless it stores them in BF16 here), stored in F32 by default: a
// GPU's FP8 GEMM writes BF16 and a kernel widens it, and every kernel
// reading the value reads twice the bytes it needs. Where the device
// writes such a product in BF16 (Device::linearWritesBf16) and its
// kernels read BF16 activations as the F32 of their values
// (Device::readsBf16Activations: adds, norms, ropes, slices, SiLU-muls
// and the products that take them), the executor keeps
// the value in BF16 when every kernel that reads it is such a kernel,
// through the splits and reshapes between (their parts and views keep the
// type): the attention's o_proj and a dense MLP's down_proj (only the
// residual add reads them), the attention's joint q/kv down projection
// (its split's parts go to the query's norm, the latent's norm and the
// key's rope), a dense MLP's gate and up (its SiLU-mul reads them), not
// the query's up projection (the MLA reads it). The same values, the
// widening kernels left out, the bytes read halved.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_BF16PRODUCTS_H
#define MELT_RUNTIME_BF16PRODUCTS_H

#include "Artifact.h"

#include <cstdint>
#include <functional>
#include <set>

namespace melt::rt {

/// The Linear kernels of `function` (one weight, a BF16 output precision)
/// whose value is no output of the function, is none of `excludedValues`
/// (values other kernels read in F32: the logit rows' gathers), and is read
/// only by kernels for which `readsBf16(kernel)` holds or, recursively, by
/// Split and Reshape kernels whose values are so read; none of them in
/// `excluded` (kernels another fusion runs in its own call), and
/// `writesBf16(linear)` holding.
std::set<uint32_t>
findBf16Products(const fb::Model &model, const fb::Function &function,
                 const std::set<uint32_t> &excluded,
                 const std::set<uint32_t> &excludedValues,
                 const std::function<bool(uint32_t kernel)> &readsBf16,
                 const std::function<bool(uint32_t kernel)> &writesBf16);

} // namespace melt::rt

#endif // MELT_RUNTIME_BF16PRODUCTS_H
