//===- VectorMath.cpp - the CPU kernels' inner loops ----------------------===//
#include "VectorMath.h"

// Sanitizer builds keep one plain version (ifunc resolvers run before the
// sanitizer's runtime is ready).
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MELT_NO_MULTIVERSION 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define MELT_NO_MULTIVERSION 1
#endif
#if defined(__x86_64__) && defined(__linux__) && !defined(MELT_NO_MULTIVERSION)
#define MELT_MULTIVERSION                                                      \
  __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MELT_MULTIVERSION
#endif

MELT_MULTIVERSION
float melt::rt::dot(const float *x, const float *y, int64_t n) {
  constexpr int kLanes = 16;
  float partial[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j)
      partial[j] += x[i + j] * y[i + j];
  float sum = 0.0f;
  for (; i < n; ++i)
    sum += x[i] * y[i];
  for (int j = 0; j < kLanes; ++j)
    sum += partial[j];
  return sum;
}

MELT_MULTIVERSION
void melt::rt::axpy(float a, const float *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    y[i] += a * x[i];
}
