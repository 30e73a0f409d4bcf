//===- NumericsTest.cpp - bf16/f16/FP8 conversions against APFloat -*- C++ -*-===//
#include "melt/numerics.h"

#include "llvm/ADT/APFloat.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace {

/// APFloat's conversion: round to nearest even, as ours must.
uint64_t reference(float f, const llvm::fltSemantics &semantics) {
  llvm::APFloat v(f);
  bool lossy;
  v.convert(semantics, llvm::APFloat::rmNearestTiesToEven, &lossy);
  return v.bitcastToAPInt().getZExtValue();
}

/// Inputs that reach every rounding case: random bit patterns, and values
/// near every representable FP8 number.
std::vector<float> samples() {
  std::vector<float> values{0.0f, -0.0f, 1.0f, -1.0f, 448.0f, 464.0f, 1e-9f,
                            -1e-9f, 0.001953125f, 0.0009765625f, 65504.0f,
                            1e-8f, 6e-8f};
  std::mt19937 rng(1234);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    float f = melt::bitsToFloat(bits(rng));
    if (std::isfinite(f))
      values.push_back(f);
  }
  for (int b = 0; b < 256; ++b) {
    float v = melt::fp8E4M3ToFloat(static_cast<uint8_t>(b));
    if (!std::isfinite(v))
      continue;
    for (float d : {0.0f, 1e-3f, -1e-3f, 0.03125f, -0.03125f, 0.0625f})
      values.push_back(v * (1.0f + d));
  }
  // The midpoints between neighbouring FP8 values (ties: to even) and the
  // floats either side of them, the subnormal grid's too.
  for (int b = 0; b < 0x7e; ++b) {
    const float lo = melt::fp8E4M3ToFloat(static_cast<uint8_t>(b)),
                hi = melt::fp8E4M3ToFloat(static_cast<uint8_t>(b + 1)),
                mid = (lo + hi) / 2;
    for (float m :
         {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY)}) {
      values.push_back(m);
      values.push_back(-m);
    }
  }
  // Every float from 2^-12 to 512 whose low 12 mantissa bits are zero or
  // all ones: each binade's rounding at every kept and dropped pattern.
  for (int e = -12; e < 9; ++e)
    for (uint32_t top = 0; top < (1u << 11); ++top)
      for (uint32_t low : {0u, 0xfffu}) {
        const float f =
            melt::bitsToFloat(uint32_t(e + 127) << 23 | top << 12 | low);
        values.push_back(f);
        values.push_back(-f);
      }
  return values;
}

TEST(Numerics, Fp8E4M3MatchesAPFloat) {
  for (float f : samples()) {
    float clamped = std::fmax(-448.0f, std::fmin(448.0f, f));
    uint64_t expected = reference(clamped, llvm::APFloat::Float8E4M3FN());
    EXPECT_EQ(melt::floatToFp8E4M3(f), expected) << f;
  }
}

TEST(Numerics, Fp8E4M3Decodes) {
  for (int b = 0; b < 256; ++b) {
    llvm::APFloat v(llvm::APFloat::Float8E4M3FN(), llvm::APInt(8, b));
    float ours = melt::fp8E4M3ToFloat(static_cast<uint8_t>(b));
    if (v.isNaN())
      EXPECT_TRUE(std::isnan(ours)) << b;
    else
      EXPECT_EQ(ours, v.convertToFloat()) << b;
  }
  EXPECT_EQ(melt::floatToFp8E4M3(1000.0f), 0x7e); // saturates to 448
  EXPECT_EQ(melt::floatToFp8E4M3(-1000.0f), 0xfe);
  EXPECT_EQ(melt::floatToFp8E4M3(NAN), 0x7f);
}

TEST(Numerics, BF16MatchesAPFloat) {
  for (float f : samples())
    EXPECT_EQ(melt::floatToBF16(f), reference(f, llvm::APFloat::BFloat()))
        << f;
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = melt::bf16ToFloat(static_cast<uint16_t>(h));
    if (std::isfinite(f))
      EXPECT_EQ(melt::floatToBF16(f), h);
  }
}

TEST(Numerics, F16MatchesAPFloat) {
  for (float f : samples())
    EXPECT_EQ(melt::floatToF16(f), reference(f, llvm::APFloat::IEEEhalf()))
        << f;
  for (uint32_t h = 0; h < 0x10000; ++h) {
    llvm::APFloat v(llvm::APFloat::IEEEhalf(), llvm::APInt(16, h));
    if (v.isNaN())
      continue;
    EXPECT_EQ(melt::f16ToFloat(static_cast<uint16_t>(h)), v.convertToFloat())
        << h;
  }
}

} // namespace
