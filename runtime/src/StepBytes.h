//===- StepBytes.h - the weight bytes a decode step reads -------*- C++ -*-===//
//
// What a decode step of one sequence must read at least: the roofline a
// batch-1 step is measured against (its bytes over the copy bandwidth).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_STEPBYTES_H
#define MELT_RUNTIME_STEPBYTES_H

#include "Artifact.h"

#include <cstdint>

namespace melt::rt {

/// The weight bytes one token's decode step through @forward reads, each
/// weight at the precision the compiled model keeps it in (its device
/// format where melt-select-kernels chose one, else its storage: FP8 as a
/// byte a value plus an f32 scale a 128x128 block, BF16 two bytes, f32
/// four): every weight its kernels use once, except an embedding table (a
/// row) and routed experts (the top k of them, k from the router whose
/// choices the experts take). Caches and activations are not counted.
uint64_t decodeStepWeightBytes(const Artifact &artifact);

} // namespace melt::rt

#endif // MELT_RUNTIME_STEPBYTES_H
