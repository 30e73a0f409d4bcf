//===- NormProductFusions.h - norms that prepare their products' input ----===//
//
// An RMSNorm whose value only FP8 products read (through the quantize pairs
// the executor folds into them: QuantizeFolds.h) hands each product the
// same input, which each quantizes in 1 x 128 blocks again: a kernel that
// reads the norm's rows back from memory, per product (BF16 products
// likewise round it to BF16 each). A device whose norm kernel can quantize
// (or round) the rows it holds (the CUDA device, for many rows) does that
// once there: the executor then calls rmsNormForProducts (or
// addRmsNormForProducts for an add and norm) with one of the products'
// weights, all of one type, and hands what it prepared to the products
// (Device::linearOfPrepared).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_NORMPRODUCTFUSIONS_H
#define MELT_RUNTIME_NORMPRODUCTFUSIONS_H

#include "Artifact.h"
#include "QuantizeFolds.h"

#include <cstdint>
#include <functional>
#include <vector>

namespace melt::rt {

/// An RMSNorm kernel and the Linear kernels that read its value.
struct NormProductFusion {
  uint32_t norm = 0;
  std::vector<uint32_t> products;
};

/// The RMSNorm kernels of `function` whose value is no output of the
/// function and is read only by Linear kernels (as their x) for which
/// `fuses(kernel)` holds, directly or through a quantize pair in `folds`.
std::vector<NormProductFusion>
findNormProductFusions(const fb::Model &model, const fb::Function &function,
                       const std::vector<QuantizeFold> &folds,
                       const std::function<bool(uint32_t kernel)> &fuses);

/// An RMSNorm kernel whose value a MoE router and MoE experts read (a MoE
/// layer's input norm): its kernel may prepare what both read of it
/// (Device::preparesForExperts), the router's BF16 rows and the experts'
/// FP8 codes, which each would otherwise make again from its F32 rows.
struct NormExpertFusion {
  uint32_t norm = 0, router = 0, experts = 0;
  /// The value's other readers (directly, or of the dequantized value of a
  /// folded quantize pair of it; UINT32_MAX: that value is an output of
  /// the function).
  std::vector<uint32_t> otherReaders;
  /// Set by the executor: the first kernel of the shared-expert call
  /// (SharedExpertFusions.h) of these experts whose gate and up are all
  /// the other readers; UINT32_MAX where the other readers are none or not
  /// those.
  uint32_t sharedCall = UINT32_MAX;
};

/// The RMSNorm kernels of `function` whose value is no output of the
/// function and is read as x by one MoERouter kernel and one MoEExperts
/// kernel (directly or through a quantize pair in `folds`); other readers
/// may read it too (they read its F32 rows as before: otherReaders).
std::vector<NormExpertFusion>
findNormExpertFusions(const fb::Model &model, const fb::Function &function,
                      const std::vector<QuantizeFold> &folds);

} // namespace melt::rt

#endif // MELT_RUNTIME_NORMPRODUCTFUSIONS_H
