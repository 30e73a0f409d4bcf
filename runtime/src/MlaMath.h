//===- MlaMath.h - one head of absorbed MLA on the CPU ----------*- C++ -*-===//
//
// The absorbed form of multi-head latent attention for one query head, the
// same for every CPU cache layout (the session's pages, a device's
// contiguous rows): W_UK folds into the query, the scores are taken on the
// cached latents and RoPE keys, and W_UV maps the weighted latent out.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_MLAMATH_H
#define MELT_RUNTIME_MLAMATH_H

#include "VectorMath.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace melt::rt {

struct MlaHeadScratch {
  std::vector<float> qlat, olat, scores;
};

/// Head `q` (N values, RoPE part `qRope`: R) over the `visible` cached
/// tokens: `latent(s)` gives token s's L latent values, `ropeKey(s)` its R
/// RoPE key values. uk is W_UK [N, L] and uv W_UV [V, L] of this head;
/// writes V values to out.
template <typename LatentRow, typename RopeRow>
void absorbedMlaHead(const float *q, const float *qRope, const float *uk,
                     const float *uv, int64_t N, int64_t R, int64_t L,
                     int64_t V, int64_t visible, double scale, LatentRow latent,
                     RopeRow ropeKey, MlaHeadScratch &tmp, float *out) {
  tmp.qlat.assign(size_t(L), 0.0f);
  for (int64_t n = 0; n < N; ++n)
    axpy(q[n], uk + n * L, tmp.qlat.data(), L);
  tmp.scores.resize(size_t(std::max<int64_t>(visible, 1)));
  float top = -INFINITY;
  for (int64_t s = 0; s < visible; ++s) {
    float score = dot(tmp.qlat.data(), latent(s), L);
    score += dot(qRope, ropeKey(s), R);
    tmp.scores[s] = static_cast<float>(score * scale);
    top = std::max(top, tmp.scores[s]);
  }
  float sum = 0.0f;
  for (int64_t s = 0; s < visible; ++s)
    sum += tmp.scores[s] = std::exp(tmp.scores[s] - top);
  tmp.olat.assign(size_t(L), 0.0f);
  for (int64_t s = 0; s < visible; ++s)
    axpy(tmp.scores[s] / sum, latent(s), tmp.olat.data(), L);
  for (int64_t v = 0; v < V; ++v)
    out[v] = dot(tmp.olat.data(), uv + v * L, L);
}

} // namespace melt::rt

#endif // MELT_RUNTIME_MLAMATH_H
