//===- SamplingMath.h - the arithmetic of a sampled token -------*- C++ -*-===//
//
// The parts of Sampling.h that the GPU's sampling kernel runs too (no
// dependencies): the parameters, the splitmix64 draw and the nucleus walk.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_SAMPLINGMATH_H
#define MELT_RUNTIME_SAMPLINGMATH_H

#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#define MELT_HOST_DEVICE __host__ __device__
#else
#define MELT_HOST_DEVICE
#endif

namespace melt::rt {

struct SamplingParams {
  float temperature = 0.f; // >= 0, finite; 0: greedy
  int topK = 0;            // >= 0; 0: every token
  float topP = 1.f;        // in (0, 1]
};

/// One splitmix64 step: advances `state` and returns the draw.
inline uint64_t nextDraw(uint64_t &state) {
  uint64_t x = (state += 0x9e3779b97f4a7c15ull);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// A draw as the devices' sampleRows take it: two 32-bit words, the low
/// one first.
MELT_HOST_DEVICE inline uint64_t drawOfWords(const uint32_t *words) {
  return uint64_t(words[0]) | uint64_t(words[1]) << 32;
}
inline void wordsOfDraw(uint64_t draw, uint32_t *words) {
  words[0] = uint32_t(draw);
  words[1] = uint32_t(draw >> 32);
}

/// The position in the nucleus a draw picks, given the candidates'
/// weights p[0..keep) in descending order (melt_sample's last steps; the
/// CUDA kernel runs the same loop in the same order).
template <typename Weights>
MELT_HOST_DEVICE size_t pickInNucleus(const Weights &p, size_t keep, float topP,
                                      uint64_t draw) {
  double sum = 0;
  for (size_t i = 0; i < keep; ++i)
    sum += p[i];
  double cumulative = 0;
  size_t nucleus = keep;
  for (size_t i = 0; i < keep; ++i) {
    cumulative += p[i] / sum;
    if (cumulative >= topP) {
      nucleus = i + 1;
      break;
    }
  }
  double total = 0;
  for (size_t i = 0; i < nucleus; ++i)
    total += p[i];
  double u = double(draw >> 11) * (1.0 / 9007199254740992.0) * total;
  for (size_t i = 0; i < nucleus; ++i) {
    if (u < p[i])
      return i;
    u -= p[i];
  }
  return nucleus - 1;
}

} // namespace melt::rt

#endif // MELT_RUNTIME_SAMPLINGMATH_H
