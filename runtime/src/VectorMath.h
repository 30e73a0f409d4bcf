//===- VectorMath.h - the CPU kernels' inner loops --------------*- C++ -*-===//
//
// Dot products and y += a x over f32 rows, written so that the compiler
// vectorizes them (16 independent partial sums: a single accumulator is a
// serial chain it may not reorder), and built for AVX-512, AVX2 and plain
// x86-64 with the best chosen when the program starts (target_clones), so
// that one binary runs everywhere and fast where it can.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_VECTORMATH_H
#define MELT_RUNTIME_VECTORMATH_H

#include <cstdint>

namespace melt::rt {

float dot(const float *x, const float *y, int64_t n);
/// y[i] += a * x[i].
void axpy(float a, const float *x, float *y, int64_t n);

} // namespace melt::rt

#endif // MELT_RUNTIME_VECTORMATH_H
