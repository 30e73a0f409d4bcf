//===- SiluMulFusions.h - MLP SiLU-muls folded into their products --------===//
//
// An MLP's down projection reads silu(gate) * up. A device whose product
// can compute that as it reads its input (a GPU's FP8 product quantizes
// each 1 x 128 block as it loads it) does better without the SiLU-mul's
// own kernel and the tensor it writes and reads back: the executor then
// leaves the SiLU-mul out and hands gate and up to the products
// (Device::linearOfSiluMul).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_SILUMULFUSIONS_H
#define MELT_RUNTIME_SILUMULFUSIONS_H

#include "Artifact.h"
#include "QuantizeFolds.h"

#include <cstdint>
#include <functional>
#include <vector>

namespace melt::rt {

/// A SiLU-mul kernel and how many products read its value.
struct SiluMulFusion {
  uint32_t siluMul = 0;
  uint32_t products = 0;
};

/// The SiLU-mul kernels of `function` whose gate and up it alone reads,
/// whose value is no output of the function and is read only by Linear
/// kernels (as their input x) for which `fuses(kernel)` holds, directly or
/// through a quantize pair in `folds` (whose dequantized value stands for
/// it).
std::vector<SiluMulFusion>
findSiluMulFusions(const fb::Model &model, const fb::Function &function,
                   const std::vector<QuantizeFold> &folds,
                   const std::function<bool(uint32_t kernel)> &fuses);

} // namespace melt::rt

#endif // MELT_RUNTIME_SILUMULFUSIONS_H
