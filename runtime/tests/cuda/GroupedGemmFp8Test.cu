// The grouped gate/up pair on FP8 tensor cores (GroupedGemmFp8.h) against
// double-precision products of the same e4m3 values and block scales:
// groups of 0, 1, 127, 128, 129 and 300 rows (padded to 128), k of one to
// sixteen blocks, two column tiles, and rows past the last group left as
// they were; the pair's FP8 output as quantizeRowsFp8 quantizes its BF16
// one; the single product (the down projection) likewise against double
// precision; each way the kernels run (GroupedFp8Options) the same bits;
// and the gather of x's quantized rows. Skips without a device.
#include "cuda/GroupedGemmFp8.h"
#include "cuda/Quantize.h"

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

/// The pair into FP8 codes and scales against the pair into BF16 rows,
/// quantized by quantizeRowsFp8: the same codes and scales, bit for bit.
void runFp8OutputCase(const std::vector<int> &counts, int n, int k) {
  const int groups = int(counts.size()), blocks = k / 128;
  const std::vector<int32_t> starts = paddedGroupStarts(counts, 128);
  const int capacity = starts.back();
  std::mt19937 rng(29);
  GroupedFp8PairArgs args;
  args.x = toDevice(randomCodes(rng, size_t(capacity) * k));
  args.xScales = toDevice(randomScales(rng, size_t(blocks) * capacity));
  args.gate = toDevice(randomCodes(rng, size_t(groups) * n * k));
  args.up = toDevice(randomCodes(rng, size_t(groups) * n * k));
  args.gateScales =
      toDevice(randomScales(rng, size_t(groups) * (n / 128) * blocks));
  args.upScales =
      toDevice(randomScales(rng, size_t(groups) * (n / 128) * blocks));
  args.starts = toDevice(starts);
  args.groups = groups, args.capacity = capacity, args.n = n, args.k = k;
  __nv_bfloat16 *rows = deviceArray<__nv_bfloat16>(size_t(capacity) * n);
  auto *wantCodes = deviceArray<__nv_fp8_e4m3>(size_t(capacity) * n);
  float *wantScales = deviceArray<float>(size_t(n / 128) * capacity);
  args.y = rows;
  ASSERT_EQ(groupedGemmFp8Pair(args, nullptr), cudaSuccess);
  ASSERT_EQ(quantizeRowsFp8(rows, capacity, n, wantCodes, wantScales, nullptr),
            cudaSuccess);
  uint8_t *codes = deviceArray<uint8_t>(size_t(capacity) * n);
  float *scales = deviceArray<float>(size_t(n / 128) * capacity);
  args.y = nullptr, args.yCodes = codes, args.yScales = scales;
  ASSERT_TRUE(groupedFp8PairFits(args));
  ASSERT_EQ(groupedGemmFp8Pair(args, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto want =
      toHost(reinterpret_cast<uint8_t *>(wantCodes), size_t(capacity) * n);
  const auto have = toHost(codes, size_t(capacity) * n);
  const auto wantS = toHost(wantScales, size_t(n / 128) * capacity);
  const auto haveS = toHost(scales, size_t(n / 128) * capacity);
  // Rows of the groups only (a group's padding rows hold what x held).
  for (int e = 0; e < groups; ++e)
    for (int r = starts[size_t(e)]; r < starts[size_t(e)] + counts[size_t(e)];
         ++r) {
      for (int b = 0; b < n / 128; ++b)
        ASSERT_EQ(haveS[size_t(b) * capacity + r],
                  wantS[size_t(b) * capacity + r])
            << "row " << r << ", block " << b;
      for (int c = 0; c < n; ++c)
        ASSERT_EQ(have[size_t(r) * n + c], want[size_t(r) * n + c])
            << "row " << r << ", column " << c;
    }
  for (const void *p :
       {static_cast<const void *>(args.x),
        static_cast<const void *>(args.xScales),
        static_cast<const void *>(args.gate),
        static_cast<const void *>(args.up),
        static_cast<const void *>(args.gateScales),
        static_cast<const void *>(args.upScales),
        static_cast<const void *>(args.starts), static_cast<const void *>(rows),
        static_cast<const void *>(wantCodes),
        static_cast<const void *>(wantScales), static_cast<const void *>(codes),
        static_cast<const void *>(scales)})
    cudaFree(const_cast<void *>(p));
}

/// The single product into F32 (or BF16) rows against double precision.
void runSingleCase(const std::vector<int> &counts, int n, int k, bool bf16) {
  const int groups = int(counts.size()), blocks = k / 128;
  const std::vector<int32_t> starts = paddedGroupStarts(counts, 128);
  const int capacity = starts.back() + 128; // a spare tile, left untouched
  std::mt19937 rng(31);
  const auto x = randomCodes(rng, size_t(capacity) * k);
  const auto xScales = randomScales(rng, size_t(blocks) * capacity);
  const auto w = randomCodes(rng, size_t(groups) * n * k);
  const auto wScales = randomScales(rng, size_t(groups) * (n / 128) * blocks);
  GroupedFp8Args args;
  args.x = toDevice(x);
  args.xScales = toDevice(xScales);
  args.w = toDevice(w);
  args.wScales = toDevice(wScales);
  args.starts = toDevice(starts);
  args.groups = groups, args.capacity = capacity, args.n = n, args.k = k;
  const float untouched = -12345.f;
  float *yF32 = nullptr;
  __nv_bfloat16 *yBf16 = nullptr;
  if (bf16)
    args.y = yBf16 = toDevice(std::vector<__nv_bfloat16>(
        size_t(capacity) * n, __float2bfloat16(untouched)));
  else
    args.yF32 = yF32 =
        toDevice(std::vector<float>(size_t(capacity) * n, untouched));
  ASSERT_TRUE(groupedFp8Fits(args));
  ASSERT_EQ(groupedGemmFp8(args, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> y(size_t(capacity) * n);
  if (bf16) {
    const auto rows = toHost(yBf16, y.size());
    for (size_t i = 0; i < y.size(); ++i)
      y[i] = __bfloat162float(rows[i]);
  } else {
    y = toHost(yF32, y.size());
  }
  // As the pair's test: each 128 of k apart, the tensor cores'
  // accumulation within a fraction of the terms' magnitudes (2^-10.8 seen
  // on the H200 for F32 rows: 2^-10 bounds it, while a block lost or
  // scaled wrongly, 2^-4 to 2^-1 of its magnitudes, still fails), BF16's
  // rounding.
  constexpr double kAccumulation = 0x1p-10;
  double worst = 0;
  for (int e = 0; e < groups; ++e)
    for (int r = starts[size_t(e)]; r < starts[size_t(e)] + counts[size_t(e)];
         ++r)
      for (int c = 0; c < n; ++c) {
        double value = 0, magnitude = 0;
        for (int b = 0; b < blocks; ++b) {
          double part = 0, size = 0;
          for (int i = 128 * b; i < 128 * (b + 1); ++i) {
            const double term = e4m3(x[size_t(r) * k + i]) *
                                e4m3(w[(size_t(e) * n + c) * k + i]);
            part += term;
            size += std::fabs(term);
          }
          const double scale =
              double(xScales[size_t(b) * capacity + r]) *
              wScales[(size_t(e) * (n / 128) + c / 128) * blocks + b];
          value += part * scale;
          magnitude += size * scale;
        }
        const double have = y[size_t(r) * n + c];
        const double bound = kAccumulation * magnitude +
                             (bf16 ? std::fabs(value) * 0x1p-8 : 0.0) + 1e-6;
        worst = std::max(worst, std::fabs(have - value) / bound);
      }
  EXPECT_LE(worst, 1.0) << "n " << n << ", k " << k << (bf16 ? ", bf16" : "");
  for (size_t i = size_t(starts.back()) * n; i < y.size(); ++i)
    ASSERT_EQ(y[i],
              bf16 ? __bfloat162float(__float2bfloat16(untouched)) : untouched)
        << "row " << i / n << " past the last group was written";
  for (const void *p :
       {static_cast<const void *>(args.x),
        static_cast<const void *>(args.xScales),
        static_cast<const void *>(args.w),
        static_cast<const void *>(args.wScales),
        static_cast<const void *>(args.starts), static_cast<const void *>(yF32),
        static_cast<const void *>(yBf16)})
    cudaFree(const_cast<void *>(p));
}

/// Each way GroupedFp8Options runs the kernels against the default's
/// bytes: the pair into BF16 rows and into FP8 codes and scales, the
/// single product into F32 and BF16 rows (the same sums in the same
/// order, so the same bits; rows past the last group untouched). Each way
/// again given the groups' ends: the same bytes, but for the groups'
/// padding rows, which stay untouched.
void expectOptionsAgree(const std::vector<int> &counts, int n, int k) {
  const int groups = int(counts.size()), blocks = k / 128;
  const std::vector<int32_t> starts = paddedGroupStarts(counts, 128);
  const int capacity = starts.back() + 128; // a spare tile
  std::mt19937 rng(37);
  const uint8_t *x = toDevice(randomCodes(rng, size_t(capacity) * k));
  const float *xScales = toDevice(randomScales(rng, size_t(blocks) * capacity));
  const uint8_t *gate = toDevice(randomCodes(rng, size_t(groups) * n * k));
  const uint8_t *up = toDevice(randomCodes(rng, size_t(groups) * n * k));
  const float *gateScales =
      toDevice(randomScales(rng, size_t(groups) * (n / 128) * blocks));
  const float *upScales =
      toDevice(randomScales(rng, size_t(groups) * (n / 128) * blocks));
  const int32_t *deviceStarts = toDevice(starts);
  std::vector<int32_t> ends;
  std::vector<bool> padding(size_t(capacity), false);
  for (int e = 0; e < groups; ++e) {
    ends.push_back(starts[size_t(e)] + counts[size_t(e)]);
    for (int r = ends.back(); r < starts[size_t(e) + 1]; ++r)
      padding[size_t(r)] = true;
  }
  const int32_t *deviceEnds = toDevice(ends);
  const size_t values = size_t(capacity) * n, scaleCount = values / 128;
  // Outputs: the pair's BF16 rows, FP8 codes, their scales, the single's
  // F32 and BF16 rows; filled with 0xff bytes first.
  constexpr int kOutputs = 5;
  const size_t bytes[kOutputs] = {2 * values, values, 4 * scaleCount,
                                  4 * values, 2 * values};
  uint8_t *out[kOutputs];
  for (int i = 0; i < kOutputs; ++i)
    out[i] = deviceArray<uint8_t>(bytes[i]);
  std::vector<std::vector<uint8_t>> first;
  // Wide columns, persistent, wide stores.
  const GroupedFp8Options ways[] = {{false, false, true},  {true, false, true},
                                    {false, true, true},   {true, true, true},
                                    {false, false, false}, {true, true, false}};
  constexpr int kWays = sizeof(ways) / sizeof(ways[0]);
  // The row of output i's byte b (the scales are [n / 128, capacity]).
  auto rowOf = [&](int i, size_t b) {
    return i == 0 || i == 4 ? b / (2 * size_t(n))
           : i == 1         ? b / size_t(n)
           : i == 2         ? b / 4 % size_t(capacity)
                            : b / (4 * size_t(n));
  };
  for (int way = 0; way < 2 * kWays; ++way) {
    const GroupedFp8Options &options = ways[way % kWays];
    const bool withEnds = way >= kWays;
    for (int i = 0; i < kOutputs; ++i)
      ASSERT_EQ(cudaMemset(out[i], 0xff, bytes[i]), cudaSuccess);
    GroupedFp8PairArgs pair;
    pair.ends = withEnds ? deviceEnds : nullptr;
    pair.x = x, pair.xScales = xScales, pair.gate = gate, pair.up = up;
    pair.gateScales = gateScales, pair.upScales = upScales;
    pair.starts = deviceStarts, pair.groups = groups;
    pair.capacity = capacity, pair.n = n, pair.k = k, pair.options = options;
    pair.y = reinterpret_cast<__nv_bfloat16 *>(out[0]);
    ASSERT_EQ(groupedGemmFp8Pair(pair, nullptr), cudaSuccess);
    pair.y = nullptr, pair.yCodes = out[1];
    pair.yScales = reinterpret_cast<float *>(out[2]);
    ASSERT_EQ(groupedGemmFp8Pair(pair, nullptr), cudaSuccess);
    GroupedFp8Args single;
    single.x = x, single.xScales = xScales, single.w = gate;
    single.wScales = gateScales, single.starts = deviceStarts;
    single.ends = withEnds ? deviceEnds : nullptr;
    single.groups = groups, single.capacity = capacity, single.n = n;
    single.k = k, single.options = options;
    single.yF32 = reinterpret_cast<float *>(out[3]);
    ASSERT_EQ(groupedGemmFp8(single, nullptr), cudaSuccess);
    single.yF32 = nullptr;
    single.y = reinterpret_cast<__nv_bfloat16 *>(out[4]);
    ASSERT_EQ(groupedGemmFp8(single, nullptr), cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    std::vector<std::vector<uint8_t>> have;
    for (int i = 0; i < kOutputs; ++i)
      have.push_back(toHost(out[i], bytes[i]));
    if (first.empty()) {
      first = have;
      continue;
    }
    const char *names[] = {"pair's BF16 rows", "pair's FP8 codes",
                           "pair's FP8 scales", "single's F32 rows",
                           "single's BF16 rows"};
    for (int i = 0; i < kOutputs; ++i)
      for (size_t b = 0; b < bytes[i]; ++b)
        ASSERT_EQ(have[size_t(i)][b], withEnds && padding[rowOf(i, b)]
                                          ? uint8_t(0xff)
                                          : first[size_t(i)][b])
            << names[i] << ", byte " << b << ", n " << n << ", k " << k
            << ", wide columns " << options.wideColumns << ", persistent "
            << options.persistent << ", wide stores " << options.wideStores
            << ", ends given " << withEnds;
  }
  for (const void *p :
       {static_cast<const void *>(x), static_cast<const void *>(xScales),
        static_cast<const void *>(gate), static_cast<const void *>(up),
        static_cast<const void *>(gateScales),
        static_cast<const void *>(upScales),
        static_cast<const void *>(deviceStarts),
        static_cast<const void *>(deviceEnds)})
    cudaFree(const_cast<void *>(p));
  for (uint8_t *p : out)
    cudaFree(p);
}

} // namespace

TEST(CudaGroupedGemmFp8, PairQuantizesItsRowsAsQuantizeRowsFp8) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  runFp8OutputCase({0, 1, 127, 128, 129, 300}, 256, 512);
  runFp8OutputCase({70, 0, 131}, 384, 2048);
}

TEST(CudaGroupedGemmFp8, SingleMatchesTheBlockScaledProducts) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  runSingleCase({0, 1, 127, 128, 129, 300}, 256, 512, false);
  runSingleCase({200}, 128, 128, true);          // one block of k, BF16 rows
  runSingleCase({70, 0, 131}, 256, 1408, false); // eleven: mini's down
}

TEST(CudaGroupedGemmFp8, PairMatchesTheBlockScaledProducts) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  runCase({0, 1, 127, 128, 129, 300}, 256, 512);
  runCase({200}, 128, 128);         // one block of k
  runCase({70, 0, 131}, 256, 2048); // sixteen: more than the ring's stages
}

TEST(CudaGroupedGemmFp8, EveryWayGivesTheSameBits) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  expectOptionsAgree({0, 1, 127, 128, 129, 300}, 256, 512);
  expectOptionsAgree({200}, 128, 128);          // one block of k, 128 columns
  expectOptionsAgree({70, 0, 131}, 384, 1408);  // 3 column tiles: not wide
  expectOptionsAgree({70, 0, 131}, 512, 2048);  // more than the ring's stages
  expectOptionsAgree({300, 520, 7}, 256, 1024); // several tiles an expert
  // Last tiles of 1, 63, 64, 65 and 127 rows of interest (padding left out).
  expectOptionsAgree({1, 63, 64, 65, 127, 128}, 256, 512);
}

// Rows of tokens' codes and scales gathered: a part of a block of rows,
// several blocks with a part at the end, mini's width.
TEST(CudaGroupedGemmFp8, GathersQuantizedRows) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  auto gather = [](int tokens, int dim, int count) {
    const int blocks = dim / 128;
    std::mt19937 rng(3);
    const auto x = randomCodes(rng, size_t(tokens) * dim);
    const auto xScales = randomScales(rng, size_t(blocks) * tokens);
    std::vector<int32_t> tokenOfRow(static_cast<size_t>(count));
    for (int r = 0; r < count; ++r)
      tokenOfRow[size_t(r)] = int32_t(rng() % unsigned(tokens));
    uint8_t *codes = deviceArray<uint8_t>(size_t(count) * dim);
    float *scales = deviceArray<float>(size_t(blocks) * count);
    const uint8_t *deviceX = toDevice(x);
    const float *deviceScales = toDevice(xScales);
    const int32_t *deviceRows = toDevice(tokenOfRow);
    ASSERT_EQ(gatherFp8Rows(deviceX, deviceScales, tokens, deviceRows, count,
                            dim, codes, scales, nullptr),
              cudaSuccess);
    const auto gotCodes = toHost(codes, size_t(count) * dim);
    const auto gotScales = toHost(scales, size_t(blocks) * count);
    for (int r = 0; r < count; ++r) {
      const int t = tokenOfRow[size_t(r)];
      for (int i = 0; i < dim; ++i)
        ASSERT_EQ(gotCodes[size_t(r) * dim + i], x[size_t(t) * dim + i])
            << count << " rows: row " << r << ", value " << i;
      for (int b = 0; b < blocks; ++b)
        ASSERT_EQ(gotScales[size_t(b) * count + r],
                  xScales[size_t(b) * tokens + t])
            << count << " rows: row " << r << ", block " << b;
    }
    cudaFree(codes);
    cudaFree(scales);
    cudaFree(const_cast<uint8_t *>(deviceX));
    cudaFree(const_cast<float *>(deviceScales));
    cudaFree(const_cast<int32_t *>(deviceRows));
  };
  gather(5, 384, 7);
  gather(9, 384, 70);
  gather(40, 2048, 300);
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
  args.upScales = scales;
  args.yCodes = const_cast<uint8_t *>(bytes); // two outputs
  EXPECT_FALSE(groupedFp8PairFits(args));
  args.y = nullptr; // FP8 rows need their scales too
  EXPECT_FALSE(groupedFp8PairFits(args));
  args.yScales = const_cast<float *>(scales);
  EXPECT_TRUE(groupedFp8PairFits(args));
  args.upScales = nullptr;
  EXPECT_FALSE(groupedFp8PairFits(args));
  EXPECT_EQ(groupedGemmFp8Pair(args, nullptr), cudaErrorInvalidValue);

  GroupedFp8Args single;
  single.groups = 1, single.capacity = 128, single.n = 128, single.k = 1408;
  single.x = bytes, single.w = bytes;
  single.xScales = scales, single.wScales = scales;
  single.yF32 = const_cast<float *>(scales);
  single.starts = args.starts;
  EXPECT_TRUE(groupedFp8Fits(single));
  single.y = reinterpret_cast<__nv_bfloat16 *>(uintptr_t(1024)); // two
  EXPECT_FALSE(groupedFp8Fits(single));
  single.yF32 = nullptr;
  EXPECT_TRUE(groupedFp8Fits(single));
  single.k = 1400; // not a block of scales
  EXPECT_FALSE(groupedFp8Fits(single));
  EXPECT_EQ(groupedGemmFp8(single, nullptr), cudaErrorInvalidValue);
}
