//===- RopeRotation.cuh - one rotary pair's RoPE in device code -*- CUDA
//-*-===//
//
// The rotation of the rope kernel, in one place for the kernels that
// rotate: the rope kernel, MLA's latent append (its key), the MLA absorb
// kernel that rotates q_rope from the query projection itself
// (Device::mlaOfQuery) and the causal attention that does so for a
// prefill. Their values must agree bit for bit.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_ROPEROTATION_CUH
#define MELT_RUNTIME_CUDA_ROPEROTATION_CUH

#include "cuda/ModelKernels.h"
#include "cuda/OperandAccess.cuh"

#include <cstdint>

namespace melt::rt::cuda {

/// The rotation of a pair of inverse frequency `inverse` at `position`:
/// its cosine and sine, scaled.
struct RopeAngle {
  double c, s;
};
__device__ __forceinline__ RopeAngle ropeAngleOf(double inverse,
                                                 int32_t position,
                                                 double mscale) {
  double s, c;
  sincos(double(position) * inverse, &s, &c);
  return {c * mscale, s * mscale};
}
/// The same for pair `pair` of `freqs`.
__device__ __forceinline__ RopeAngle ropeAngle(int pair, int32_t position,
                                               const RopeFrequencies &freqs,
                                               double mscale) {
  return ropeAngleOf(freqs.inverse[pair], position, mscale);
}

/// A pair's two values (xa, xb) rotated by `angle`.
__device__ __forceinline__ float2 rotateValues(const RopeAngle &angle, float xa,
                                               float xb) {
  return make_float2(float(xa * angle.c - xb * angle.s),
                     float(xb * angle.c + xa * angle.s));
}

/// Pair `pair` of a row of `dim` rotary values: its two columns, and
/// their values rotated by `angle`.
struct RotatedPair {
  int a, b;
  float ya, yb;
};
__device__ __forceinline__ RotatedPair rotateBy(const RopeAngle &angle,
                                                Operand x, size_t base,
                                                int pair, int dim,
                                                bool interleaved) {
  RotatedPair r;
  r.a = interleaved ? 2 * pair : pair;
  r.b = interleaved ? 2 * pair + 1 : pair + dim / 2;
  const float2 y =
      rotateValues(angle, load(x, base + r.a), load(x, base + r.b));
  r.ya = y.x, r.yb = y.y;
  return r;
}

/// The same at `position`.
__device__ __forceinline__ RotatedPair
rotatePair(Operand x, size_t base, int pair, int dim, bool interleaved,
           int32_t position, const RopeFrequencies &freqs, double mscale) {
  return rotateBy(ropeAngle(pair, position, freqs, mscale), x, base, pair, dim,
                  interleaved);
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_ROPEROTATION_CUH
