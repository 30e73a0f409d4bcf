//===- LatentAppends.h - MLA's latent append with its norm and rope -------===//
//
// MLA writes each token's cache row from the kv down-projection: the
// latent's RMSNorm, the RoPE key's rotation, then the latent cache append.
// The three run one after the other and their two values have no reader
// but the append, so that a device may do them in one pass
// (Device::appendLatent): on a GPU one kernel a layer where there were
// three, for a decode step's few tokens each a launch's latency.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_LATENTAPPENDS_H
#define MELT_RUNTIME_LATENTAPPENDS_H

#include "Artifact.h"

#include <cstdint>
#include <vector>

namespace melt::rt {

/// An RMSNorm, a Rope and the LatentCacheAppend of their values.
struct LatentAppend {
  uint32_t norm = 0, rope = 0, append = 0;
};

/// The LatentCacheAppend kernels of `function` whose latent comes from the
/// RMSNorm and whose key from the Rope right before them (in either order,
/// the three consecutive in the function's order), the append their one
/// reader, neither value an output of the function.
std::vector<LatentAppend> findLatentAppends(const fb::Model &model,
                                            const fb::Function &function);

} // namespace melt::rt

#endif // MELT_RUNTIME_LATENTAPPENDS_H
