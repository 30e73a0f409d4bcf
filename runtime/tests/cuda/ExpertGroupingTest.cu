// Expert grouping on the GPU (ExpertGrouping.h), by experts and by chunks
// (a workspace given), against the same grouping on the host: group starts
// in multiples of 128, each pair's row its rank among its expert's pairs,
// each row's token (padding rows token 0), where each group's pairs end,
// and a bad index flagged. Skips
// without a device.
#include "cuda/ExpertGrouping.h"

#include "CudaTestUtil.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

struct Grouped {
  std::vector<int32_t> starts, rowOfPair, tokenOfRow, ends;
  int32_t bad = 0;
};

Grouped onDevice(const std::vector<int32_t> &chosen, int topK, int experts,
                 int capacity, bool chunked) {
  ExpertGroupingArgs args;
  args.chosen = toDevice(chosen);
  args.tokens = int(chosen.size()) / topK;
  args.topK = topK;
  args.experts = experts;
  args.capacity = capacity;
  args.starts = deviceArray<int32_t>(size_t(experts) + 1);
  args.rowOfPair = deviceArray<int32_t>(chosen.size());
  // Rows start as garbage: every one must be written.
  args.tokenOfRow = toDevice(std::vector<int32_t>(size_t(capacity), 7777));
  args.bad = toDevice(std::vector<int32_t>{0});
  args.ends = toDevice(std::vector<int32_t>(size_t(experts), 7777));
  if (chunked)
    args.chunkOffsets = deviceArray<int32_t>(size_t(
        std::max(1, expertGroupingWorkspace(int(chosen.size()), experts))));
  Grouped got;
  EXPECT_EQ(groupExperts(args, nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  got.starts = toHost(args.starts, size_t(experts) + 1);
  got.rowOfPair = toHost(args.rowOfPair, chosen.size());
  got.tokenOfRow = toHost(args.tokenOfRow, size_t(capacity));
  got.bad = toHost(args.bad, 1)[0];
  got.ends = toHost(args.ends, size_t(experts));
  for (const void *p : {(const void *)args.chosen, (const void *)args.starts,
                        (const void *)args.ends, (const void *)args.rowOfPair,
                        (const void *)args.tokenOfRow, (const void *)args.bad,
                        (const void *)args.chunkOffsets})
    cudaFree(const_cast<void *>(p));
  return got;
}

Grouped onHost(const std::vector<int32_t> &chosen, int topK, int experts,
               int capacity) {
  Grouped want;
  std::vector<int> counts(size_t(experts), 0);
  for (int32_t e : chosen)
    if (e >= 0 && e < experts)
      ++counts[size_t(e)];
    else
      want.bad = 1;
  want.starts.assign(size_t(experts) + 1, 0);
  for (int e = 0; e < experts; ++e)
    want.starts[size_t(e) + 1] =
        want.starts[size_t(e)] + (counts[size_t(e)] + kExpertGroupRows - 1) /
                                     kExpertGroupRows * kExpertGroupRows;
  for (int e = 0; e < experts; ++e)
    want.ends.push_back(want.starts[size_t(e)] + counts[size_t(e)]);
  want.tokenOfRow.assign(size_t(capacity), 0);
  want.rowOfPair.assign(chosen.size(), -1);
  std::vector<int> next(want.starts.begin(), want.starts.end() - 1);
  for (size_t p = 0; p < chosen.size(); ++p) {
    const int32_t e = chosen[p];
    if (e < 0 || e >= experts)
      continue;
    const int row = next[size_t(e)]++;
    want.rowOfPair[p] = row;
    want.tokenOfRow[size_t(row)] = int32_t(p / size_t(topK));
  }
  return want;
}

void expectSame(const std::vector<int32_t> &chosen, int topK, int experts) {
  const int capacity =
      expertGroupingCapacity(int(chosen.size()), experts) + kExpertGroupRows;
  const Grouped want = onHost(chosen, topK, experts, capacity);
  for (bool chunked : {false, true}) {
    const Grouped got = onDevice(chosen, topK, experts, capacity, chunked);
    const char *how = chunked ? "by chunks" : "by experts";
    EXPECT_EQ(got.starts, want.starts) << how;
    EXPECT_EQ(got.rowOfPair, want.rowOfPair) << how;
    EXPECT_EQ(got.tokenOfRow, want.tokenOfRow) << how;
    EXPECT_EQ(got.ends, want.ends) << how;
    EXPECT_EQ(got.bad, want.bad) << how;
  }
}

} // namespace

TEST(CudaExpertGrouping, MatchesTheHost) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(5);
  // mini's prefill at 1024 and 8192 tokens (64 experts, top 6), a skewed
  // choice (most pairs on a few experts), V3's 256 experts (8192 tokens:
  // 256 chunks of pairs), the most experts, and a single token.
  for (auto [tokens, topK, experts, skew] :
       {std::tuple{1024, 6, 64, false}, std::tuple{8192, 6, 64, false},
        std::tuple{3000, 6, 64, true}, std::tuple{700, 8, 256, false},
        std::tuple{8192, 8, 256, false},
        std::tuple{500, 8, kMaxGroupedExperts, false},
        std::tuple{1, 8, 256, false}}) {
    std::vector<int32_t> chosen(size_t(tokens) * topK);
    std::uniform_int_distribution<int> any(0, experts - 1), few(0, 3);
    for (auto &e : chosen)
      e = skew ? few(rng) : any(rng);
    expectSame(chosen, topK, experts);
  }
}

TEST(CudaExpertGrouping, FlagsAnIndexOutsideTheExperts) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  expectSame({0, 3, 64, 1, -1, 2}, 2, 64);
}

TEST(CudaExpertGrouping, RefusesTooSmallACapacity) {
  ExpertGroupingArgs args;
  int32_t dummy = 0;
  args.chosen = args.starts = args.rowOfPair = args.tokenOfRow = args.bad =
      &dummy;
  args.tokens = 100;
  args.topK = 6;
  args.experts = 64;
  args.capacity = expertGroupingCapacity(600, 64) - kExpertGroupRows;
  EXPECT_EQ(groupExperts(args, nullptr), cudaErrorInvalidValue);
  args.capacity += kExpertGroupRows;
  args.experts = kMaxGroupedExperts + 1;
  EXPECT_EQ(groupExperts(args, nullptr), cudaErrorInvalidValue);
}
