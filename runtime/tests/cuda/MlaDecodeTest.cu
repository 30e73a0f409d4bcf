// The CUDA MLA decode kernel against a double-precision reference on the
// same BF16 inputs: several sequence lengths (partial tiles, empty chunks,
// one token), scattered pages, 16 and 128 heads. Skips without a device.
#include "cuda/MlaDecode.h"
#include "CudaTestUtil.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

struct Case {
  int heads;
  std::vector<int> lengths;
  // The SM count the split over the sequence is planned for.
  int smCount = 132;
  // false: the warp-MMA kernel where the warpgroup one would run.
  bool warpgroups = true;
  // false: the cache's extent not given (no TMA: cp.async copies).
  bool cacheExtent = true;
  // The page table's tokens a sequence, where more than the longest (a
  // step recorded for a longer context: the split planned for it, the
  // sequences spread over its chunks by their lengths).
  int capacity = 0;
  // Tokens a page: 64, or 32 (16 heads then take 32-token tiles, two
  // blocks an SM, not 64-token ones).
  int pageSize = 64;
};

void runCase(const Case &c) {
  const int batch = static_cast<int>(c.lengths.size()), pageSize = c.pageSize;
  const int maxLength = std::max(
      c.capacity, *std::max_element(c.lengths.begin(), c.lengths.end()));
  const int pagesPerSeq = (maxLength + pageSize - 1) / pageSize;
  const int totalPages = batch * pagesPerSeq;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<__nv_bfloat16> cache(size_t(totalPages) * pageSize * kLatentEntry);
  std::vector<__nv_bfloat16> queries(size_t(batch) * c.heads * kLatentEntry);
  for (auto &v : cache)
    v = __float2bfloat16(normal(rng));
  for (auto &v : queries)
    v = __float2bfloat16(normal(rng));
  // Pages handed out in a shuffled order, as a page pool would.
  std::vector<int32_t> order(totalPages);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<int32_t> table(order.begin(), order.end());
  float scale = 1.f / std::sqrt(192.f);

  MlaDecodeArgs args;
  args.queries = toDevice(queries);
  args.cache = toDevice(cache);
  args.blockTable = toDevice(table);
  args.lengths = toDevice(c.lengths);
  __nv_bfloat16 *output = nullptr;
  ASSERT_EQ(cudaMalloc(&output, size_t(batch) * c.heads * kLatentRank * 2),
            cudaSuccess);
  args.output = output;
  args.batch = batch;
  args.heads = c.heads;
  args.pageSize = pageSize;
  args.maxPagesPerSequence = pagesPerSeq;
  args.maxLength = maxLength;
  args.scale = scale;
  args.warpgroups = c.warpgroups;
  args.cachePages = c.cacheExtent ? totalPages : 0;
  const int smCount = c.smCount;
  size_t bytes = mlaDecodeWorkspaceBytes(args, smCount);
  void *workspace = nullptr;
  ASSERT_EQ(cudaMalloc(&workspace, bytes), cudaSuccess);
  ASSERT_EQ(mlaDecode(args, workspace, bytes, smCount, nullptr), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<__nv_bfloat16> got(size_t(batch) * c.heads * kLatentRank);
  ASSERT_EQ(cudaMemcpy(got.data(), output, got.size() * 2,
                       cudaMemcpyDeviceToHost),
            cudaSuccess);

  double worst = 0, largest = 0;
  for (int b = 0; b < batch; ++b) {
    auto entry = [&](int token) {
      int page = table[b * pagesPerSeq + token / pageSize];
      return &cache[(size_t(page) * pageSize + token % pageSize) *
                    kLatentEntry];
    };
    for (int h = 0; h < c.heads; ++h) {
      const __nv_bfloat16 *q =
          &queries[(size_t(b) * c.heads + h) * kLatentEntry];
      std::vector<double> scores(c.lengths[b]);
      double top = -1e300;
      for (int t = 0; t < c.lengths[b]; ++t) {
        double dot = 0;
        for (int i = 0; i < kLatentEntry; ++i)
          dot += double(__bfloat162float(q[i])) *
                 __bfloat162float(entry(t)[i]);
        scores[t] = dot * scale;
        top = std::max(top, scores[t]);
      }
      double sum = 0;
      for (double &s : scores)
        sum += (s = std::exp(s - top));
      for (int i = 0; i < kLatentRank; ++i) {
        double want = 0;
        for (int t = 0; t < c.lengths[b]; ++t)
          want += scores[t] / sum * __bfloat162float(entry(t)[i]);
        double have = __bfloat162float(
            got[(size_t(b) * c.heads + h) * kLatentRank + i]);
        worst = std::max(worst, std::fabs(have - want));
        largest = std::max(largest, std::fabs(want));
      }
    }
  }
  // BF16 attention weights and output: ~3 significant digits.
  EXPECT_LE(worst, 1e-2 * std::max(1.0, largest))
      << c.heads << " heads, largest " << largest;
  std::printf("heads %d, batch %d, max length %d (%s, %s): max abs error "
              "%.3g (largest value %.3g)\n",
              c.heads, batch, maxLength,
              mlaDecodeOnWarpgroups(args) ? "wgmma" : "mma.sync",
              mlaDecodeBulkCopies(args) ? "tma" : "cp.async", worst, largest);
  cudaFree(workspace);
  cudaFree(output);
  cudaFree(const_cast<__nv_bfloat16 *>(args.queries));
  cudaFree(const_cast<__nv_bfloat16 *>(args.cache));
  cudaFree(const_cast<int32_t *>(args.blockTable));
  cudaFree(const_cast<int32_t *>(args.lengths));
}

} // namespace

TEST(CudaMlaDecode, MatchesReference) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  runCase({16, {1, 63, 64, 65, 700, 2048}});
  runCase({128, {5, 300}});
  runCase({32, {4096}});
  runCase({128, {5, 300, 1000}, 4});
  runCase({64, {2000, 33}, 2});
  // Many tiles a chunk on the warpgroup kernel, and the warp kernel at the
  // heads the warpgroup kernel takes.
  runCase({128, {4096, 70, 1}});
  runCase({128, {4096, 70, 1}, 132, true, false});
  runCase({64, {129, 3000}, 8, true, false});
  runCase({64, {1500, 64, 2}, 132, false});
  runCase({128, {5, 300, 1000}, 4, false});
  // The warp kernel's tiles by cp.async (by TMA above, the cache's extent
  // given): 16 and 32 heads, and 64 a block.
  runCase({16, {1, 63, 64, 65, 700, 2048}, 132, true, false});
  runCase({32, {4096, 31}, 8, true, false});
  runCase({64, {1500, 64, 2}, 132, false, false});
  // Sequences spread over a split planned for a longer table (a step
  // recorded for its capacity): chunks past a sequence's end, by TMA and by
  // cp.async, and on the warpgroup kernel.
  runCase({16, {190, 1, 33, 1000}, 132, true, true, 4096});
  runCase({16, {190, 1, 33}, 132, true, false, 8192});
  runCase({128, {190, 1}, 132, false, true, 4096});
  runCase({32, {700, 64}, 8, true, true, 4096});
  // Pages of 32 tokens: 16 and 32 heads on 32-token tiles (64 above), by
  // TMA and by cp.async, a split planned for a longer table.
  runCase({16, {1, 31, 32, 33, 700, 2048}, 132, true, true, 0, 32});
  runCase({32, {190, 1, 1000}, 132, true, false, 4096, 32});
}

TEST(CudaMlaDecode, RejectsUnsupportedShapes) {
  MlaDecodeArgs args;
  args.batch = 1;
  args.heads = 12; // not a multiple of 16
  args.pageSize = 64;
  args.maxPagesPerSequence = 1;
  args.maxLength = 10;
  EXPECT_EQ(mlaDecode(args, nullptr, 0, 132, nullptr), cudaErrorInvalidValue);
  args.heads = 16;
  args.pageSize = 48; // not a multiple of a tile (32 tokens)
  EXPECT_EQ(mlaDecode(args, nullptr, 0, 132, nullptr), cudaErrorInvalidValue);
}

TEST(CudaMlaDecode, ChoosesTheKernelByShape) {
  // Host-side choices only: no device needed.
  MlaDecodeArgs args;
  args.batch = 1;
  args.heads = 128;
  args.pageSize = 64;
  args.maxPagesPerSequence = 1;
  args.maxLength = 10;
  EXPECT_TRUE(mlaDecodeOnWarpgroups(args));
  args.heads = 80; // not in 64s
  EXPECT_FALSE(mlaDecodeOnWarpgroups(args));
  args.heads = 64;
  args.pageSize = 32; // a 64-token tile would span two pages
  EXPECT_FALSE(mlaDecodeOnWarpgroups(args));
  args.pageSize = 128;
  EXPECT_TRUE(mlaDecodeOnWarpgroups(args));
  args.warpgroups = false;
  EXPECT_FALSE(mlaDecodeOnWarpgroups(args));
  // TMA only where the cache's extent is given.
  args.warpgroups = true;
  args.cachePages = 0;
  EXPECT_FALSE(mlaDecodeBulkCopies(args));
}

// Host-side planning (no device needed): a sequence split into as many
// chunks as fill one wave of the warp kernel's blocks (16 heads on pages of
// 64: 64-token tiles, one block an SM; on pages of 32: 32-token tiles, two
// an SM), each of at least 128 tokens, read off the workspace (an
// unnormalized [512] sum and its statistics per sequence, chunk and head).
TEST(CudaMlaDecode, SplitsSequencesIntoChunksOfAtLeast128Tokens) {
  MlaDecodeArgs args;
  args.heads = 16;
  args.pageSize = 64;
  auto chunks = [&](int batch, int length, int smCount) {
    args.batch = batch;
    args.maxLength = length;
    args.maxPagesPerSequence = (length + args.pageSize - 1) / args.pageSize;
    const size_t perSlot = kLatentRank * sizeof(float) + sizeof(float2);
    return mlaDecodeWorkspaceBytes(args, smCount) /
           (size_t(batch) * args.heads * perSlot);
  };
  EXPECT_EQ(chunks(1, 4096, 132), 32u); // 4096 / 128, not the 132 slots
  EXPECT_EQ(chunks(64, 4096, 132), 2u); // 132 slots / 64 sequences
  EXPECT_EQ(chunks(1, 100, 132), 1u);   // shorter than one chunk
  EXPECT_EQ(chunks(2, 4096, 4), 2u);    // 4 slots / 2 sequences
  args.pageSize = 32;                   // 32-token tiles: two an SM
  EXPECT_EQ(chunks(64, 4096, 132), 4u); // 264 slots / 64 sequences
  EXPECT_EQ(chunks(2, 4096, 4), 4u);    // 8 slots / 2 sequences
  args.chunksPerSequence = 8;           // asked for
  EXPECT_EQ(chunks(64, 4096, 132), 8u);
}
