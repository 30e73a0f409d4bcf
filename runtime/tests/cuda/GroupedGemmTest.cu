// The grouped BF16 product (GroupedGemm.h) against a double-precision
// product of the same BF16 values: groups of 0, 1, 127, 128, 129 and 300
// rows (padded to 128), several blocks of k, two column tiles, and rows
// past the last group left as they were. Skips without a device.
#include "cuda/GroupedGemm.h"

#include "CudaTestUtil.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

void runCase(const std::vector<int> &counts, int n, int k) {
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
  const __nv_bfloat16 untouched = __float2bfloat16(-12345.f);
  std::vector<__nv_bfloat16> y(size_t(capacity) * n, untouched);

  GroupedGemmArgs args;
  args.x = toDevice(x);
  args.w = toDevice(w);
  __nv_bfloat16 *deviceY = toDevice(y);
  args.y = deviceY;
  args.starts = toDevice(starts);
  args.groups = groups;
  args.capacity = capacity;
  args.n = n;
  args.k = k;
  ASSERT_TRUE(groupedGemmFits(args));
  ASSERT_EQ(groupedGemmBf16(args, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  y = toHost(deviceY, y.size());

  double worst = 0;
  for (int e = 0; e < groups; ++e)
    for (int r = starts[size_t(e)]; r < starts[size_t(e)] + counts[size_t(e)];
         ++r)
      for (int c = 0; c < n; ++c) {
        double want = 0;
        for (int i = 0; i < k; ++i)
          want += double(__bfloat162float(x[size_t(r) * k + i])) *
                  __bfloat162float(w[(size_t(e) * n + c) * k + i]);
        const double have = __bfloat162float(y[size_t(r) * n + c]);
        // BF16 output: 2^-8 of the value, plus the FP32 sums' order.
        worst = std::max(worst, std::fabs(have - want) /
                                    (std::fabs(want) * 0x1p-8 + 1e-2));
      }
  EXPECT_LE(worst, 1.0) << "n " << n << ", k " << k;
  for (size_t i = size_t(starts.back()) * n; i < y.size(); ++i)
    ASSERT_EQ(__bfloat162float(y[i]), __bfloat162float(untouched))
        << "row " << i / n << " past the last group was written";
  cudaFree(const_cast<__nv_bfloat16 *>(args.x));
  cudaFree(const_cast<__nv_bfloat16 *>(args.w));
  cudaFree(deviceY);
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
}
