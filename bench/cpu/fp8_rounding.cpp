// How fast the host puts weights on DeepSeek-V3's FP8 block grid and reads
// their e4m3 codes back (melt's Fp8Blocks.h over numerics.h's conversions):
// random weights of an FP8 model are rounded so, and every FP8 weight a
// device stores in FP8 is encoded so, value by value (mini: ~4 billion
// values each time). Beside them, the same rounding through frexp, ldexp
// and nearbyint (the conversion numerics.h had before session 24), as the
// reference for the speed-up; both must give the same bits.
//   c++ -O2 -std=c++17 -pthread -Iruntime/include -Iruntime/src \
//     bench/cpu/fp8_rounding.cpp runtime/src/Fp8Blocks.cpp -o fp8_rounding
//   ./fp8_rounding [matrices]   (matrices of mini's expert shape, 1408 x 2048)
#include "Fp8Blocks.h"
#include "melt/numerics.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

/// f32 -> e4m3fn through libm, round to nearest even, saturating.
uint8_t referenceToFp8(float f) {
  if (std::isnan(f))
    return 0x7f;
  uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  float a = std::fabs(f);
  if (a >= melt::kFp8E4M3Max)
    return sign | 0x7e;
  int exponent;
  std::frexp(a, &exponent);
  int e = std::max(exponent - 1, -6);
  float step = std::ldexp(1.0f, e - 3);
  float q = std::nearbyint(a / step) * step;
  if (q >= melt::kFp8E4M3Max)
    return sign | 0x7e;
  if (q == 0.0f)
    return sign;
  int qe;
  float qm = std::frexp(q, &qe);
  int biased = qe - 1 + 7;
  if (biased <= 0)
    return sign | static_cast<uint8_t>(std::lround(std::ldexp(q, 9)));
  return sign | static_cast<uint8_t>((biased << 3) |
                                     std::lround((qm * 2.0f - 1.0f) * 8.0f));
}

float referenceFromFp8(uint8_t v) {
  float sign = (v & 0x80) ? -1.0f : 1.0f;
  int exponent = (v >> 3) & 0xf, mantissa = v & 0x7;
  if (exponent == 0)
    return sign * std::ldexp(static_cast<float>(mantissa), -9);
  return sign * std::ldexp(1.0f + mantissa / 8.0f, exponent - 7);
}

void referenceRound(float *data, int64_t rows, int64_t cols) {
  for (int64_t r0 = 0; r0 < rows; r0 += 128)
    for (int64_t c0 = 0; c0 < cols; c0 += 128) {
      const int64_t r1 = std::min(rows, r0 + 128),
                    c1 = std::min(cols, c0 + 128);
      float amax = 0.0f;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c)
          amax = std::max(amax, std::fabs(data[r * cols + c]));
      const float scale = std::max(amax, 1e-12f) / melt::kFp8E4M3Max;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c)
          data[r * cols + c] =
              referenceFromFp8(referenceToFp8(data[r * cols + c] / scale)) *
              scale;
    }
}

double seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since)
      .count();
}

} // namespace

int main(int argc, char **argv) {
  const int64_t rows = 1408, cols = 2048;
  const int64_t matrices = argc > 1 ? std::atol(argv[1]) : 8;
  const size_t n = size_t(matrices * rows * cols);
  std::vector<float> weights(n);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (float &v : weights) { // Model::loadRandom's values
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v = 0.0346410f * (float(x >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
  std::vector<float> ours = weights, reference = weights;
  auto t = std::chrono::steady_clock::now();
  for (int64_t m = 0; m < matrices; ++m)
    melt::rt::roundToFp8Blocks(ours.data() + m * rows * cols, rows, cols, 128,
                               128);
  const double roundS = seconds(t);
  t = std::chrono::steady_clock::now();
  for (int64_t m = 0; m < matrices; ++m)
    referenceRound(reference.data() + m * rows * cols, rows, cols);
  const double referenceS = seconds(t);
  const bool same =
      std::memcmp(ours.data(), reference.data(), n * sizeof(float)) == 0;
  std::vector<uint8_t> codes(n);
  std::vector<float> scales(size_t(matrices * 11 * 16));
  t = std::chrono::steady_clock::now();
  const bool encoded = melt::rt::encodeFp8Blocks(
      ours.data(), matrices, rows, cols, codes.data(), scales.data());
  const double encodeS = seconds(t);
  std::printf("{\"what\": \"fp8_rounding\", \"values\": %zu, "
              "\"round_ns_per_value\": %.2f, "
              "\"reference_round_ns_per_value\": %.2f, \"speedup\": %.2f, "
              "\"same_bits\": %s, \"encode_ns_per_value_all_cores\": %.2f, "
              "\"encoded\": %s}\n",
              n, roundS * 1e9 / n, referenceS * 1e9 / n, referenceS / roundS,
              same ? "true" : "false", encodeS * 1e9 / n,
              encoded ? "true" : "false");
  return same && encoded ? 0 : 1;
}
