//===- MlaProductFusions.h - MLA outputs prepared for their products -*- C++
//-*-===//
//
// An MLA's output reaches nothing but its output projection (through a
// Reshape of its heads into one row and the quantize pair the executor
// folds into the product): an FP8 product that quantizes its input in
// 1 x 128 blocks, reading back the attention's F32 rows (or a BF16 one
// that rounds them to BF16). A device whose attention kernel can write
// those codes (or BF16 rows) itself (a block is one head's value row, held
// by the threads that computed it) does so where asked
// (Device::preparesInMla, Device::prepareMlaOutput), and the product reads
// them (Device::linearOfPrepared), as for the norms of NormProductFusions.h.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_MLAPRODUCTFUSIONS_H
#define MELT_RUNTIME_MLAPRODUCTFUSIONS_H

#include "Artifact.h"
#include "QuantizeFolds.h"

#include <cstdint>
#include <functional>
#include <vector>

namespace melt::rt {

/// An MLA kernel and the Linear kernels that read its value.
struct MlaProductFusion {
  uint32_t mla = 0;
  std::vector<uint32_t> products;
  /// The Reshape's value the products read (a view of the MLA's), or
  /// UINT32_MAX where they read the MLA's value itself.
  uint32_t view = UINT32_MAX;
};

/// The MLA kernels of `function` whose value is no output of the function
/// and is read only by Linear kernels (as their x) for which
/// `fuses(kernel)` holds, directly, through a Reshape that is its one
/// reader, and through a quantize pair in `folds`.
std::vector<MlaProductFusion>
findMlaProductFusions(const fb::Model &model, const fb::Function &function,
                      const std::vector<QuantizeFold> &folds,
                      const std::function<bool(uint32_t kernel)> &fuses);

} // namespace melt::rt

#endif // MELT_RUNTIME_MLAPRODUCTFUSIONS_H
