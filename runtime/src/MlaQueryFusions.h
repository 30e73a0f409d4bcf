//===- MlaQueryFusions.h - an MLA's query split and rope in its call ------===//
//
// MLA's query projection gives each head's q_nope and q_rope side by side
// ([T, H, nope + rope]); the program splits them apart (copies: the parts
// are strided) and rotates q_rope before the MLA reads both. A device whose
// MLA can read q_nope and rotate q_rope from the projection's rows itself
// (Device::fusesMlaQuery) leaves out the split's two copies and the rope,
// three launches of a decode step's layer: the executor then hands the
// projection to Device::mlaOfQuery.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_MLAQUERYFUSIONS_H
#define MELT_RUNTIME_MLAQUERYFUSIONS_H

#include "Artifact.h"

#include <cstdint>
#include <vector>

namespace melt::rt {

/// A Split of the query projection, the Rope of its second part, and the
/// MLA that reads the first part and the rotated second.
struct MlaQueryFusion {
  uint32_t split = 0, rope = 0, mla = 0;
};

/// The MLA kernels of `function` whose q_nope is output 0 of a Split of a
/// 3-D value along its last axis into two parts, and whose q_rope is a
/// Rope of the split's output 1 at the MLA's positions; the split's outputs
/// and the rope's read by those alone, none an output of the function.
std::vector<MlaQueryFusion> findMlaQueryFusions(const fb::Model &model,
                                                const fb::Function &function);

} // namespace melt::rt

#endif // MELT_RUNTIME_MLAQUERYFUSIONS_H
