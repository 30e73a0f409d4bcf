// The grouped gate/up pair on FP8 tensor cores (GroupedGemmFp8.h) against
// double-precision products of the same e4m3 values and block scales:
// groups of 0, 1, 127, 128, 129 and 300 rows (padded to 128), k of one to
// sixteen blocks, two column tiles, and rows past the last group left as
// they were; and the gather of x's quantized rows. Skips without a device.
#include "cuda/GroupedGemmFp8.h"

#include "CudaTestUtil.h"

#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

double e4m3(uint8_t code) {
  __nv_fp8_e4m3 v;
  v.__x = code;
  return double(float(v));
}

/// Random e4m3 codes, the NaN ones left out.
std::vector<uint8_t> randomCodes(std::mt19937 &rng, size_t count) {
  std::uniform_int_distribution<int> code(0, 255);
  std::vector<uint8_t> codes(count);
  for (auto &c : codes) {
    do
      c = uint8_t(code(rng));
    while ((c & 0x7f) == 0x7f);
  }
  return codes;
}

std::vector<float> randomScales(std::mt19937 &rng, size_t count) {
  std::uniform_real_distribution<float> scale(0.001f, 0.01f);
  std::vector<float> scales(count);
  for (float &s : scales)
    s = scale(rng);
  return scales;
}

double roundedBf16(double v) {
  return __bfloat162float(__float2bfloat16(float(v)));
}

void runCase(const std::vector<int> &counts, int n, int k) {
  const int groups = int(counts.size()), blocks = k / 128;
  const std::vector<int32_t> starts = paddedGroupStarts(counts, 128);
  // One spare tile past the last group: its rows must stay untouched.
  const int capacity = starts.back() + 128;
  std::mt19937 rng(23);
  const auto x = randomCodes(rng, size_t(capacity) * k);
  const auto xScales = randomScales(rng, size_t(blocks) * capacity);
  const auto gate = randomCodes(rng, size_t(groups) * n * k);
  const auto up = randomCodes(rng, size_t(groups) * n * k);
  const auto gateScales =
      randomScales(rng, size_t(groups) * (n / 128) * blocks);
  const auto upScales = randomScales(rng, size_t(groups) * (n / 128) * blocks);
  const float untouched = -12345.f;
  std::vector<__nv_bfloat16> y(size_t(capacity) * n,
                               __float2bfloat16(untouched));

  GroupedFp8PairArgs args;
  args.x = toDevice(x);
  args.xScales = toDevice(xScales);
  args.gate = toDevice(gate);
  args.up = toDevice(up);
  args.gateScales = toDevice(gateScales);
  args.upScales = toDevice(upScales);
  __nv_bfloat16 *deviceY = toDevice(y);
  args.y = deviceY;
  args.starts = toDevice(starts);
  args.groups = groups;
  args.capacity = capacity;
  args.n = n;
  args.k = k;
  ASSERT_TRUE(groupedFp8PairFits(args));
  ASSERT_EQ(groupedGemmFp8Pair(args, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  y = toHost(deviceY, y.size());

  // Each 128 of k summed apart, then times its x and weight scales; with
  // the same sum of the terms' magnitudes, which bounds the accumulation's
  // error.
  struct Product {
    double value = 0, magnitude = 0;
  };
  auto product = [&](const std::vector<uint8_t> &w,
                     const std::vector<float> &wScales, int e, int r, int c) {
    Product sum;
    for (int b = 0; b < blocks; ++b) {
      double part = 0, magnitude = 0;
      for (int i = 128 * b; i < 128 * (b + 1); ++i) {
        const double term =
            e4m3(x[size_t(r) * k + i]) * e4m3(w[(size_t(e) * n + c) * k + i]);
        part += term;
        magnitude += std::fabs(term);
      }
      const double scale =
          double(xScales[size_t(b) * capacity + r]) *
          wScales[(size_t(e) * (n / 128) + c / 128) * blocks + b];
      sum.value += part * scale;
      sum.magnitude += magnitude * scale;
    }
    return sum;
  };
  // Hopper's FP8 tensor cores add a wgmma's products with fewer bits than
  // F32 (about 14, DeepSeek-V3's report, 3.3.2): within a block of k the
  // error grows with the terms' magnitudes, not with their sum, which the
  // random codes' cancellation leaves far smaller. 2^-11 of the magnitudes
  // holds that with margin while a block lost or scaled wrongly (a block's
  // sum: 2^-4 to 2^-1 of its magnitudes for these codes) still fails.
  constexpr double kAccumulation = 0x1p-11;
  double worst = 0, worstOfMagnitudes = 0;
  for (int e = 0; e < groups; ++e)
    for (int r = starts[size_t(e)]; r < starts[size_t(e)] + counts[size_t(e)];
         ++r)
      for (int c = 0; c < n; ++c) {
        const Product g = product(gate, gateScales, e, r, c),
                      u = product(up, upScales, e, r, c);
        const double gateValue = roundedBf16(g.value),
                     upValue = roundedBf16(u.value);
        const double silu = gateValue / (1 + std::exp(-gateValue));
        const double want = silu * upValue;
        const double have = __bfloat162float(y[size_t(r) * n + c]);
        // The products' BF16 rounding (up to 2^-8 of each, the F32 sums'
        // order may flip it) and the output's; the accumulation's error
        // carried through SiLU (slope at most 1.1) and the product.
        const double magnitudes = 1.1 * std::fabs(upValue) * g.magnitude +
                                  std::fabs(silu) * u.magnitude;
        worst = std::max(worst, std::fabs(have - want) /
                                    (std::fabs(want) * 0x1p-6 +
                                     kAccumulation * magnitudes + 5e-2));
        worstOfMagnitudes =
            std::max(worstOfMagnitudes, std::fabs(have - want) / magnitudes);
      }
  EXPECT_LE(worst, 1.0) << "n " << n << ", k " << k;
  std::printf("n %d, k %d: error at most 2^%.1f of the terms' magnitudes\n", n,
              k, std::log2(worstOfMagnitudes));
  const double initial = __bfloat162float(__float2bfloat16(untouched));
  for (size_t i = size_t(starts.back()) * n; i < y.size(); ++i)
    ASSERT_EQ(double(__bfloat162float(y[i])), initial)
        << "row " << i / n << " past the last group was written";
  cudaFree(const_cast<uint8_t *>(args.x));
  cudaFree(const_cast<float *>(args.xScales));
  cudaFree(const_cast<uint8_t *>(args.gate));
  cudaFree(const_cast<uint8_t *>(args.up));
  cudaFree(const_cast<float *>(args.gateScales));
  cudaFree(const_cast<float *>(args.upScales));
  cudaFree(deviceY);
  cudaFree(const_cast<int32_t *>(args.starts));
}

} // namespace

TEST(CudaGroupedGemmFp8, PairMatchesTheBlockScaledProducts) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  runCase({0, 1, 127, 128, 129, 300}, 256, 512);
  runCase({200}, 128, 128);         // one block of k
  runCase({70, 0, 131}, 256, 2048); // sixteen: more than the ring's stages
}

TEST(CudaGroupedGemmFp8, GathersQuantizedRows) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  const int tokens = 5, dim = 384, count = 7, blocks = dim / 128;
  std::mt19937 rng(3);
  const auto x = randomCodes(rng, size_t(tokens) * dim);
  const auto xScales = randomScales(rng, size_t(blocks) * tokens);
  const std::vector<int32_t> tokenOfRow = {4, 0, 0, 2, 1, 3, 4};
  uint8_t *codes = deviceArray<uint8_t>(size_t(count) * dim);
  float *scales = deviceArray<float>(size_t(blocks) * count);
  const uint8_t *deviceX = toDevice(x);
  const float *deviceScales = toDevice(xScales);
  const int32_t *deviceRows = toDevice(tokenOfRow);
  ASSERT_EQ(gatherFp8Rows(deviceX, deviceScales, tokens, deviceRows, count, dim,
                          codes, scales, nullptr),
            cudaSuccess);
  const auto gotCodes = toHost(codes, size_t(count) * dim);
  const auto gotScales = toHost(scales, size_t(blocks) * count);
  for (int r = 0; r < count; ++r) {
    const int t = tokenOfRow[size_t(r)];
    for (int i = 0; i < dim; ++i)
      ASSERT_EQ(gotCodes[size_t(r) * dim + i], x[size_t(t) * dim + i])
          << "row " << r << ", value " << i;
    for (int b = 0; b < blocks; ++b)
      ASSERT_EQ(gotScales[size_t(b) * count + r],
                xScales[size_t(b) * tokens + t])
          << "row " << r << ", block " << b;
  }
  cudaFree(codes);
  cudaFree(scales);
  cudaFree(const_cast<uint8_t *>(deviceX));
  cudaFree(const_cast<float *>(deviceScales));
  cudaFree(const_cast<int32_t *>(deviceRows));
}

TEST(CudaGroupedGemmFp8, RefusesWhatItCannotTake) {
  GroupedFp8PairArgs args;
  args.groups = 1;
  args.capacity = 128;
  args.n = 128;
  args.k = 128;
  auto *bytes = reinterpret_cast<const uint8_t *>(uintptr_t(256));
  auto *scales = reinterpret_cast<const float *>(uintptr_t(512));
  args.x = bytes, args.gate = bytes, args.up = bytes;
  args.xScales = scales, args.gateScales = scales, args.upScales = scales;
  args.y = reinterpret_cast<__nv_bfloat16 *>(uintptr_t(1024));
  args.starts = reinterpret_cast<const int32_t *>(uintptr_t(256));
  EXPECT_TRUE(groupedFp8PairFits(args));
  args.k = 64; // not a block of scales
  EXPECT_FALSE(groupedFp8PairFits(args));
  args.k = 128;
  args.n = 192; // not a column tile
  EXPECT_FALSE(groupedFp8PairFits(args));
  args.n = 128;
  args.upScales = nullptr;
  EXPECT_FALSE(groupedFp8PairFits(args));
  EXPECT_EQ(groupedGemmFp8Pair(args, nullptr), cudaErrorInvalidValue);
}
