//===- melt/numerics.h - bf16 and FP8 e4m3 conversions ----------*- C++ -*-===//
//
// Bit-exact conversions between f32 and the storage types of checkpoints:
// bf16 and OCP float8 e4m3fn (the format of DeepSeek-V3's weights: 1 sign, 4
// exponent (bias 7), 3 mantissa bits, no infinities, 0x7f/0xff are NaN,
// largest finite 448). Round to nearest, ties to even; FP8 saturates to
// +-448. Header-only so that the compiler and the runtime share it.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_NUMERICS_H
#define MELT_NUMERICS_H

#include <cmath>
#include <cstdint>
#include <cstring>

namespace melt {

inline uint32_t floatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float bitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

/// f32 -> bf16, round to nearest even; NaN stays NaN.
inline uint16_t floatToBF16(float f) {
  uint32_t u = floatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((u >> 16) | 0x40); // quiet NaN
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

inline float bf16ToFloat(uint16_t h) {
  return bitsToFloat(static_cast<uint32_t>(h) << 16);
}

/// f32 -> f16 (IEEE half), round to nearest even, overflow to infinity.
inline uint16_t floatToF16(float f) {
  uint32_t u = floatBits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t absBits = u & 0x7fffffffu;
  if (absBits > 0x7f800000u)
    return sign | 0x7e00u; // NaN
  if (absBits >= 0x477ff000u) // rounds to >= 65520: infinity
    return sign | 0x7c00u;
  if (absBits < 0x38800000u) { // below the smallest normal half: subnormal
    float scaled = bitsToFloat(absBits) * 16777216.0f; // * 2^24
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  uint32_t rounding = 0xfffu + ((absBits >> 13) & 1u);
  return sign | static_cast<uint16_t>((absBits - 0x38000000u + rounding) >> 13);
}

inline float f16ToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0)
    return bitsToFloat(sign) + (sign ? -1.0f : 1.0f) *
                                   static_cast<float>(mantissa) / 16777216.0f;
  if (exponent == 31)
    return bitsToFloat(sign | 0x7f800000u | (mantissa << 13));
  return bitsToFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

/// Largest finite value of float8 e4m3fn.
constexpr float kFp8E4M3Max = 448.0f;

inline float fp8E4M3ToFloat(uint8_t v) {
  float sign = (v & 0x80) ? -1.0f : 1.0f;
  int exponent = (v >> 3) & 0xf, mantissa = v & 0x7;
  if (exponent == 0xf && mantissa == 0x7)
    return std::nanf("");
  if (exponent == 0)
    return sign * std::ldexp(static_cast<float>(mantissa), -9);
  return sign * std::ldexp(1.0f + mantissa / 8.0f, exponent - 7);
}

/// f32 -> float8 e4m3fn, round to nearest even, saturating to +-448.
inline uint8_t floatToFp8E4M3(float f) {
  if (std::isnan(f))
    return 0x7f;
  uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  float a = std::fabs(f);
  if (a >= kFp8E4M3Max)
    return sign | 0x7e; // 448
  // Step between representable values at a's binade: subnormals (a < 2^-6)
  // are multiples of 2^-9, normals have 3 mantissa bits.
  int exponent;
  std::frexp(a, &exponent); // a = m * 2^exponent, m in [0.5, 1)
  int e = exponent - 1;     // a in [2^e, 2^(e+1))
  if (e < -6)
    e = -6;
  float step = std::ldexp(1.0f, e - 3);
  float q = std::nearbyint(a / step) * step; // ties to even under FE_TONEAREST
  if (q >= kFp8E4M3Max)
    return sign | 0x7e;
  if (q == 0.0f)
    return sign;
  int qe;
  float qm = std::frexp(q, &qe); // q = qm * 2^qe, qm in [0.5, 1)
  int biased = qe - 1 + 7;
  if (biased <= 0) // subnormal: q = mantissa * 2^-9
    return sign | static_cast<uint8_t>(std::lround(std::ldexp(q, 9)));
  int mantissa = static_cast<int>(std::lround((qm * 2.0f - 1.0f) * 8.0f));
  return sign | static_cast<uint8_t>((biased << 3) | mantissa);
}

} // namespace melt

#endif // MELT_NUMERICS_H
