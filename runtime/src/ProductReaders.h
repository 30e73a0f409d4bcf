//===- ProductReaders.h - the products a value feeds ----------*- C++ -*-===//
//
// For the fusions that hand a kernel's work to the products that read its
// value (SiluMulFusions.h): the Linear kernels that read a
// value as their x, directly or through a folded quantize pair
// (QuantizeFolds.h: the pair's dequantized value stands for x).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_PRODUCTREADERS_H
#define MELT_RUNTIME_PRODUCTREADERS_H

#include "Artifact.h"
#include "FunctionUses.h"
#include "QuantizeFolds.h"

#include <cstdint>
#include <functional>
#include <vector>

namespace melt::rt {

/// The Linear kernels that read `value` as their x, directly or through a
/// quantize pair of `folds`, where `fuses(kernel)` holds for each of them
/// and no other kernel reads it; empty otherwise (also where it is an
/// output of the function).
std::vector<uint32_t>
fusingProductsOf(const fb::Model &model, const FunctionUses &uses,
                 const std::vector<QuantizeFold> &folds, uint32_t value,
                 const std::function<bool(uint32_t kernel)> &fuses);

} // namespace melt::rt

#endif // MELT_RUNTIME_PRODUCTREADERS_H
