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

/// float8 e4m3fn -> f32, exactly (NaN for the two NaN codes). From the bits:
/// loading a large checkpoint decodes billions of them.
inline float fp8E4M3ToFloat(uint8_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x80) << 24;
  const uint32_t exponent = (v >> 3) & 0xfu, mantissa = v & 0x7u;
  if (exponent == 0xf && mantissa == 0x7)
    return std::nanf("");
  if (exponent == 0) // subnormal: mantissa x 2^-9 (exact)
    return bitsToFloat(sign | floatBits(static_cast<float>(mantissa) / 512.0f));
  return bitsToFloat(sign | ((exponent + 120) << 23) | (mantissa << 20));
}

/// f32 -> float8 e4m3fn, round to nearest even, saturating to +-448. On the
/// bits (no frexp, ldexp or division): a checkpoint's FP8 weights are
/// encoded and checked value by value when a device stores them in FP8.
inline uint8_t floatToFp8E4M3(float f) {
  if (std::isnan(f))
    return 0x7f;
  const uint32_t bits = floatBits(f);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= floatBits(kFp8E4M3Max)) // 448 and beyond, infinity too
    return sign | 0x7e;
  if (magnitude < floatBits(0.015625f)) {
    // Below 2^-6: the subnormal grid, multiples of 2^-9 (8 of them: 2^-6,
    // the first normal's code 0x08, as the grid's next step).
    const float steps = std::nearbyint(bitsToFloat(magnitude) * 512.0f);
    return sign | static_cast<uint8_t>(steps);
  }
  // Normals: 3 mantissa bits of the 23, rounded to nearest even (a carry
  // moves to the next binade).
  const uint32_t rounded =
      (magnitude + 0x7ffffu + ((magnitude >> 20) & 1u)) & ~0xfffffu;
  if (rounded >= floatBits(kFp8E4M3Max))
    return sign | 0x7e;
  const uint32_t exponent = (rounded >> 23) - 120; // f32 bias 127, e4m3's 7
  return sign | static_cast<uint8_t>((exponent << 3) | ((rounded >> 20) & 7u));
}

} // namespace melt

#endif // MELT_NUMERICS_H
