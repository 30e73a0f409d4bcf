//===- GateUpPairs.h - an MLP's gate, up and SiLU-mul as one call ---------===//
//
// An MLP computes silu(x w_gate^T) * (x w_up^T): two products of the same
// x and the SiLU-mul of their results, which nothing else reads. At a
// decode step's few rows each product streams its weight once; a device
// that streams both weights' rows in pairs and writes the SiLU-mul of
// their sums (Device::siluMulOfProducts) does in one kernel what three
// did, without the two products' outputs (the CUDA device: mini's dense
// MLP, 90 MB of gate and up at batch 1). The executor asks the device at
// each step (Device::takesSiluMulOfProducts).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_GATEUPPAIRS_H
#define MELT_RUNTIME_GATEUPPAIRS_H

#include "Artifact.h"

#include <cstdint>
#include <vector>

namespace melt::rt {

/// A SiLU-mul and the two Linear kernels that make its gate and up;
/// `first`, the one of them that comes first in the function's order.
struct GateUpPair {
  uint32_t gate = 0, up = 0, siluMul = 0, first = 0;
};

/// The SiLU-muls of `function` whose gate and up are made by two Linear
/// kernels of one weight each reading the same x, which the SiLU-mul alone
/// reads and the function does not output, the gate's Linear, the up's
/// and the SiLU-mul one after the other in the function's order (the two
/// products in either order).
std::vector<GateUpPair> findGateUpPairs(const fb::Model &model,
                                        const fb::Function &function);

} // namespace melt::rt

#endif // MELT_RUNTIME_GATEUPPAIRS_H
