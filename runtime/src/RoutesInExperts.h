//===- RoutesInExperts.h - a router's choices made by its experts' call ---===//
//
// A DeepSeek MoE layer's router (MoERouter: the gate's logits, then the
// choice of each token's experts) and its routed experts (MoEExperts) are
// two device calls. At a decode step of one token the choice is one small
// kernel on the step's path between the router's product and the experts'
// kernels, which wait for it. Where the router's choices and weights are
// read by its experts' kernel alone, the executor asks the device to route
// through Device::routeInExperts, which may leave the choice to that
// experts call (the CUDA device's one-token kernels make it themselves).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_ROUTESINEXPERTS_H
#define MELT_RUNTIME_ROUTESINEXPERTS_H

#include "Artifact.h"

#include <cstdint>
#include <set>

namespace melt::rt {

/// The MoERouter kernels of `function` whose two values (the choices and
/// their weights) have one reader, the same MoEExperts kernel, which reads
/// them as its choices and weights, later in the function's order; neither
/// value is an output of the function.
std::set<uint32_t> findRoutesInExperts(const fb::Model &model,
                                       const fb::Function &function);

} // namespace melt::rt

#endif // MELT_RUNTIME_ROUTESINEXPERTS_H
