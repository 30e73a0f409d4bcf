// The grouped BF16 product (GroupedGemm.h) against a double-precision
// product of the same BF16 values: groups of 0, 1, 127, 128, 129 and 300
// rows (padded to 128), several blocks of k, two column tiles, BF16 and
// F32 output, BF16 and FP8 block-scaled weights (against their widened
// BF16 values), and rows past the last group left as they were. Skips
// without a device.
#include "cuda/GroupedGemm.h"

#include "CudaTestUtil.h"

#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

/// Output in BF16, or in F32 where `f32Out`; weights in BF16, or in FP8
/// with 128x128 block scales where `fp8`.
void runCase(const std::vector<int> &counts, int n, int k, bool f32Out = false,
             bool fp8 = false) {
  const int groups = int(counts.size());
  std::vector<int32_t> starts(size_t(groups) + 1, 0);
  for (int e = 0; e < groups; ++e)
    starts[size_t(e) + 1] =
        starts[size_t(e)] + (counts[size_t(e)] + kGroupedGemmRows - 1) /
                                kGroupedGemmRows * kGroupedGemmRows;
  // One spare tile past the last group: its rows must stay untouched.
  const int capacity = starts.back() + kGroupedGemmRows;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto randomBf16 = [&](size_t count) {
    std::vector<__nv_bfloat16> v(count);
    for (auto &x : v)
      x = __float2bfloat16(normal(rng));
    return v;
  };
  auto x = randomBf16(size_t(capacity) * k);
  auto w = randomBf16(size_t(groups) * n * k);
  // FP8: random e4m3 codes (not the NaN ones) and block scales; w then
  // holds the values they widen to (code's value times scale, in BF16).
  const int kScaleBlocks = (k + 127) / 128;
  std::vector<uint8_t> codes(fp8 ? w.size() : 0);
  std::vector<float> scales(fp8 ? size_t(groups) * (n / 128) * kScaleBlocks
                                : 0);
  std::uniform_int_distribution<int> code(0, 255);
  std::uniform_real_distribution<float> scaleOf(0.002f, 0.05f);
  for (float &v : scales)
    v = scaleOf(rng);
  for (size_t i = 0; i < codes.size(); ++i) {
    do
      codes[i] = uint8_t(code(rng));
    while ((codes[i] & 0x7f) == 0x7f);
    const size_t e = i / (size_t(n) * k), r = i / k % n, c = i % k;
    __nv_fp8_e4m3 value;
    value.__x = codes[i];
    w[i] = __float2bfloat16(
        float(value) *
        scales[(e * (n / 128) + r / 128) * kScaleBlocks + c / 128]);
  }
  const float untouched = -12345.f;
  std::vector<__nv_bfloat16> y(size_t(capacity) * n,
                               __float2bfloat16(untouched));
  std::vector<float> y32(size_t(capacity) * n, untouched);

  GroupedGemmArgs args;
  args.x = toDevice(x);
  if (fp8) {
    args.w = toDevice(codes);
    args.wScales = toDevice(scales);
  } else {
    args.w = toDevice(w);
  }
  __nv_bfloat16 *deviceY = f32Out ? nullptr : toDevice(y);
  float *deviceY32 = f32Out ? toDevice(y32) : nullptr;
  args.y = deviceY;
  args.yF32 = deviceY32;
  args.starts = toDevice(starts);
  args.groups = groups;
  args.capacity = capacity;
  args.n = n;
  args.k = k;
  ASSERT_TRUE(groupedGemmFits(args));
  ASSERT_EQ(groupedGemmBf16(args, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  if (f32Out)
    y32 = toHost(deviceY32, y32.size());
  else
    y = toHost(deviceY, y.size());
  auto output = [&](size_t i) {
    return f32Out ? double(y32[i]) : double(__bfloat162float(y[i]));
  };

  double worst = 0;
  for (int e = 0; e < groups; ++e)
    for (int r = starts[size_t(e)]; r < starts[size_t(e)] + counts[size_t(e)];
         ++r)
      for (int c = 0; c < n; ++c) {
        double want = 0;
        for (int i = 0; i < k; ++i)
          want += double(__bfloat162float(x[size_t(r) * k + i])) *
                  __bfloat162float(w[(size_t(e) * n + c) * k + i]);
        const double have = output(size_t(r) * n + c);
        // BF16 output: 2^-8 of the value; either: the FP32 sums' order.
        const double bound = f32Out ? std::fabs(want) * 1e-4 + 2e-3
                                    : std::fabs(want) * 0x1p-8 + 1e-2;
        worst = std::max(worst, std::fabs(have - want) / bound);
      }
  EXPECT_LE(worst, 1.0) << "n " << n << ", k " << k << ", f32 " << f32Out
                        << ", fp8 " << fp8;
  for (size_t i = size_t(starts.back()) * n; i < y.size(); ++i)
    ASSERT_EQ(output(i),
              f32Out ? double(untouched)
                     : double(__bfloat162float(__float2bfloat16(untouched))))
        << "row " << i / n << " past the last group was written";
  cudaFree(const_cast<__nv_bfloat16 *>(args.x));
  cudaFree(const_cast<void *>(args.w));
  cudaFree(const_cast<float *>(args.wScales));
  cudaFree(deviceY);
  cudaFree(deviceY32);
  cudaFree(const_cast<int32_t *>(args.starts));
}

} // namespace

TEST(CudaGroupedGemm, MatchesThePlainProducts) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  runCase({0, 1, 127, 128, 129, 300}, 256, 512);
  // One block of k; one group; k of 3 stages' worth and more.
  runCase({200}, 128, 64);
  runCase({5, 0, 0, 40}, 128, 192);
  runCase({64, 64}, 384, 2048);
  runCase({0, 1, 127, 128, 129, 300}, 256, 512, /*f32Out=*/true);
  runCase({64, 64}, 384, 2048, /*f32Out=*/true);
  // FP8 weights: k of one block of 64 (half a scale block), of 11 scale
  // blocks (an expert's intermediate 1408), F32 and BF16 output.
  runCase({0, 1, 127, 128, 129, 300}, 256, 512, false, /*fp8=*/true);
  runCase({200}, 128, 64, false, true);
  runCase({70, 0, 131}, 256, 1408, true, true);
}

TEST(CudaGroupedGemm, RefusesWhatItCannotTake) {
  GroupedGemmArgs args;
  args.groups = 1;
  args.capacity = 128;
  args.n = 128;
  args.k = 64;
  auto *p = reinterpret_cast<__nv_bfloat16 *>(uintptr_t(256));
  args.x = p, args.w = p, args.y = p;
  args.starts = reinterpret_cast<const int32_t *>(uintptr_t(256));
  EXPECT_TRUE(groupedGemmFits(args));
  args.n = 100; // not a multiple of a column tile
  EXPECT_FALSE(groupedGemmFits(args));
  args.n = 128;
  args.k = 96; // not a multiple of a block of k
  EXPECT_FALSE(groupedGemmFits(args));
  args.k = 64;
  args.capacity = 100; // not a multiple of a row tile
  EXPECT_FALSE(groupedGemmFits(args));
  EXPECT_EQ(groupedGemmBf16(args, nullptr), cudaErrorInvalidValue);
  args.capacity = 128;
  args.yF32 = reinterpret_cast<float *>(uintptr_t(256)); // two outputs
  EXPECT_FALSE(groupedGemmFits(args));
  args.y = nullptr; // the F32 one only
  EXPECT_TRUE(groupedGemmFits(args));
  args.yF32 = nullptr; // neither
  EXPECT_FALSE(groupedGemmFits(args));
}
