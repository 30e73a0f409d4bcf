//===- Sampling.h - temperature, top-k and top-p sampling -------*- C++ -*-===//
//
// melt_sample's arithmetic, shared by the C API (a row of logits on the
// host) and the devices' sampleRows (every row of a step, where its logits
// are): candidates by descending logit (the lower index first on ties),
// cut to top_k, weights exp((logit - max) / temperature) in double, cut to
// the smallest prefix whose share reaches top_p, then the draw. A draw is
// the 64-bit output of one splitmix64 step of the caller's state, so that
// the same seed gives the same tokens wherever the logits are.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_SAMPLING_H
#define MELT_RUNTIME_SAMPLING_H

#include "SamplingMath.h"
#include "Status.h"

#include <cstddef>
#include <cstdint>

namespace melt::rt {

/// A clear error naming `what` when the parameters are out of range.
Status checkSampling(const SamplingParams &params, const char *what);

/// The token of a row of n > 0 logits for a draw (temperature > 0).
int32_t sampleToken(const float *logits, size_t n,
                    const SamplingParams &params, uint64_t draw);

} // namespace melt::rt

#endif // MELT_RUNTIME_SAMPLING_H
