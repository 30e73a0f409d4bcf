// Weights on DeepSeek-V3's FP8 block grid: rounding onto it and recovering
// the e4m3 codes and scales exactly (what a device that keeps a weight in
// FP8 does at load), for stacks of matrices with partial edge blocks,
// e4m3 subnormals, all-zero blocks and checkpoint scales that are not
// exactly amax / 448 in F32.
#include "Fp8Blocks.h"

#include "melt/numerics.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

using namespace melt;
using namespace melt::rt;

namespace {

constexpr int64_t kMatrices = 3, kRows = 200, kCols = 300;
constexpr int64_t kScaleCount = kMatrices * 2 * 3; // 128x128 blocks

std::vector<float> decoded(const std::vector<uint8_t> &codes,
                           const std::vector<float> &scales) {
  std::vector<float> out(codes.size());
  for (int64_t m = 0; m < kMatrices; ++m)
    for (int64_t r = 0; r < kRows; ++r)
      for (int64_t c = 0; c < kCols; ++c) {
        const int64_t i = (m * kRows + r) * kCols + c;
        out[size_t(i)] = fp8E4M3ToFloat(codes[size_t(i)]) *
                         scales[size_t((m * 2 + r / 128) * 3 + c / 128)];
      }
  return out;
}

TEST(Fp8Blocks, RoundedWeightsComeBackExactly) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.f, 0.05f);
  std::vector<float> values(size_t(kMatrices * kRows * kCols));
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = normal(rng) * (i % 89 == 0 ? 1e-4f : 1.f); // subnormals too
  for (int64_t r = 0; r < 128; ++r) // matrix 1's first block: all zero
    for (int64_t c = 0; c < 128; ++c)
      values[size_t((kRows + r) * kCols + c)] = 0.f;
  for (int64_t m = 0; m < kMatrices; ++m)
    roundToFp8Blocks(values.data() + m * kRows * kCols, kRows, kCols, 128,
                     128);
  std::vector<uint8_t> codes(values.size());
  std::vector<float> scales(kScaleCount);
  ASSERT_TRUE(encodeFp8Blocks(values.data(), kMatrices, kRows, kCols,
                              codes.data(), scales.data()));
  EXPECT_EQ(decoded(codes, scales), values);
}

// A checkpoint's values: codes times a scale that amax / 448 misses by an
// ulp when 448 x scale rounds in F32.
TEST(Fp8Blocks, CheckpointScalesAreRecovered) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> code(0, 0xfe);
  std::uniform_real_distribution<float> scale(1e-4f, 1e-2f);
  int offGuess = 0;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<uint8_t> want(size_t(kMatrices * kRows * kCols));
    for (uint8_t &c : want) {
      c = uint8_t(code(rng));
      if ((c & 0x7f) == 0x7f)
        c = 0x7e; // no NaN
    }
    std::vector<float> wantScales(kScaleCount);
    for (float &s : wantScales)
      s = scale(rng);
    for (int64_t b = 0; b < kScaleCount; ++b) {
      // Each block holds 448 (its largest code) at its first value.
      const int64_t m = b / 6, rb = b % 6 / 3, cb = b % 3;
      want[size_t((m * kRows + rb * 128) * kCols + cb * 128)] = 0x7e;
      offGuess += wantScales[size_t(b)] !=
                  fp8E4M3ToFloat(0x7e) * wantScales[size_t(b)] / 448.f;
    }
    std::vector<float> values = decoded(want, wantScales);
    std::vector<uint8_t> codes(values.size());
    std::vector<float> scales(kScaleCount);
    ASSERT_TRUE(encodeFp8Blocks(values.data(), kMatrices, kRows, kCols,
                                codes.data(), scales.data()))
        << "trial " << trial;
    EXPECT_EQ(decoded(codes, scales), values) << "trial " << trial;
  }
  // The search beside amax / 448 was needed (else this test proves less).
  EXPECT_GT(offGuess, 0);
}

TEST(Fp8Blocks, ValuesOffTheGridAreRefused) {
  std::vector<float> values(size_t(kMatrices * kRows * kCols), 0.25f);
  for (int64_t m = 0; m < kMatrices; ++m)
    roundToFp8Blocks(values.data() + m * kRows * kCols, kRows, kCols, 128,
                     128);
  values[size_t(2 * kRows * kCols + 199 * kCols + 299)] = 0.2501f;
  std::vector<uint8_t> codes(values.size());
  std::vector<float> scales(kScaleCount);
  EXPECT_FALSE(encodeFp8Blocks(values.data(), kMatrices, kRows, kCols,
                               codes.data(), scales.data()));
}

} // namespace
