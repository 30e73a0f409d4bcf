// The MLA kernels that read each cached row once for 16 heads and split the
// sequence into chunks (MlaSplit.h) against the kernel that runs a block per
// (token, head) over the whole sequence, at DeepSeek-V3's head shapes: 16
// and 128 heads (8 head groups), decode tokens over 700 positions (many
// chunks, a partial last tile) and a prefill's causal rows (one chunk
// each), pages scattered; and the prefill path on tensor cores (BF16)
// against the same kernel. Skips without a device.
#include "CudaTestUtil.h"
#include "cuda/CausalAttention.h"
#include "cuda/MlaDecodeFused.h"
#include "cuda/MlaDecompressed.h"
#include "cuda/MlaSplit.h"
#include "cuda/ModelKernels.h"
#include "melt/numerics.h"

#include <gtest/gtest.h>

#include <memory>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

struct Case {
  int heads;
  /// Each token's sequence and position.
  std::vector<int32_t> sequences, positions;
  /// The tensor-core path (BF16 scores and sums) instead of the split.
  bool tensorCores = false;
  /// Positions of a sequence not consecutive (the tensor-core path flags
  /// them).
  bool spread = false;
  /// The decompressed form (K and V per head, TF32 GEMMs), its scores held
  /// for blocks of `scoreBudget` floats (0: unbounded), or its attention in
  /// the fused BF16 kernel.
  bool decompressed = false;
  size_t scoreBudget = 0;
  bool fusedBf16 = false;
  /// The tested path reads a BF16 copy of the cache (the reference reads
  /// the same values in F32); with decodeStep, on mlaDecodeStep (token t
  /// the one token of sequence t).
  bool bf16Cache = false, decodeStep = false;
  /// With bf16Cache, on mlaDecodeFused (one kernel) for a table of this
  /// many positions, in this form.
  int fusedMaxVisible = 0;
  MlaFusedForm fusedForm = MlaFusedForm::Chosen;
};

void runCase(const Case &c) {
  const int nope = 128, rope = 64, latent = 512, valueDim = 128;
  const int width = latent + rope, batch = 2, perSequence = 48;
  const int tokens = int(c.sequences.size()), pages = batch * perSequence;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto randoms = [&](size_t n, float spread) {
    std::vector<float> v(n);
    for (float &x : v)
      x = normal(rng) * spread;
    return v;
  };
  std::vector<float> cache = randoms(size_t(pages) * kPageRows * width, 1.f);
  std::vector<uint16_t> cacheBits;
  if (c.bf16Cache)
    for (float &v : cache) {
      cacheBits.push_back(melt::floatToBF16(v));
      v = melt::bf16ToFloat(cacheBits.back());
    }
  std::vector<float> qNope = randoms(size_t(tokens) * c.heads * nope, 1.f);
  std::vector<float> qRope = randoms(size_t(tokens) * c.heads * rope, 1.f);
  std::vector<float> wUk = randoms(size_t(c.heads) * nope * latent, 0.05f);
  std::vector<float> wUv = randoms(size_t(c.heads) * valueDim * latent, 0.05f);
  std::vector<int32_t> table(static_cast<size_t>(pages));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  std::vector<int32_t> lengths(batch, 0);
  for (int t = 0; t < tokens; ++t)
    lengths[size_t(c.sequences[size_t(t)])] = std::max(
        lengths[size_t(c.sequences[size_t(t)])], c.positions[size_t(t)] + 1);

  PagedLayout layout{toDevice(c.positions), toDevice(c.sequences),
                     toDevice(table),       toDevice(lengths),
                     perSequence,           batch,
                     pages * kPageRows};
  const auto *dCacheBf16 = reinterpret_cast<const __nv_bfloat16 *>(
      c.bf16Cache ? toDevice(cacheBits) : nullptr);
  const float *dCache = toDevice(cache), *dQn = toDevice(qNope),
              *dQr = toDevice(qRope), *dUk = toDevice(wUk),
              *dUv = toDevice(wUv);
  const size_t outCount = size_t(tokens) * c.heads * valueDim;
  float *split = deviceArray<float>(outCount);
  float *whole = deviceArray<float>(outCount);
  int32_t *bad = toDevice(std::vector<int32_t>{0});
  const int maxVisible =
      c.fusedMaxVisible ? c.fusedMaxVisible : perSequence * kPageRows;
  const float scale = 1.f / std::sqrt(192.f);
  MlaSplitShape shape{tokens, c.heads,  nope,      rope,
                      latent, valueDim, maxVisible};
  ASSERT_TRUE(mlaSplitFits(shape));
  int chunks = mlaSplitChunks(shape, 132);
  float *scratch = nullptr;
  if (c.fusedMaxVisible) {
    ASSERT_TRUE(c.bf16Cache && mlaDecodeFusedFits(shape));
    ASSERT_EQ(mlaDecodeFused(dQn, dQr, dCacheBf16, layout, dUk, dUv, shape,
                             scale, split, nullptr, nullptr,
                             MlaEarlyReads::None, c.fusedForm),
              cudaSuccess);
  } else if (c.decodeStep) {
    ASSERT_TRUE(c.bf16Cache && mlaDecodeStepFits(shape));
    size_t bytes = mlaDecodeStepScratchBytes(shape, layout, 132);
    scratch = deviceArray<float>(bytes / sizeof(float) + 1);
    ASSERT_EQ(mlaDecodeStep(dQn, dQr, dCacheBf16, layout, dUk, dUv, shape,
                            scale, scratch, bytes, split, 132, nullptr),
              cudaSuccess);
  } else if (c.tensorCores) {
    ASSERT_TRUE(mlaTensorCoresFit(shape));
    size_t bytes = mlaTensorCoreScratchBytes(shape, batch, 132);
    scratch = deviceArray<float>(bytes / sizeof(float) + 1);
    std::unique_ptr<GemmRunner> gemm;
    ASSERT_FALSE(GemmRunner::create(nullptr, gemm));
    int32_t *spread = toDevice(std::vector<int32_t>{0});
    CudaStatus run =
        c.bf16Cache
            ? mlaTensorCores(*gemm, dQn, dQr, dCacheBf16, layout, dUk, dUv,
                             shape, scale, scratch, bytes, split, bad, spread,
                             132)
            : mlaTensorCores(*gemm, dQn, dQr, dCache, layout, dUk, dUv, shape,
                             scale, scratch, bytes, split, bad, spread, 132);
    ASSERT_FALSE(run) << run.error;
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(toHost(spread, 1)[0], c.spread ? 1 : 0);
    cudaFree(spread);
    if (c.spread) { // the stray tokens' outputs are zero: nothing to compare
      cudaFree(scratch);
      return;
    }
  } else if (c.decompressed) {
    std::vector<DecompressedQueries> runs;
    ASSERT_TRUE(decompressedRuns(c.sequences, c.positions, runs));
    const size_t budget = c.scoreBudget ? c.scoreBudget : size_t(1) << 30;
    ASSERT_EQ(mlaDecompressedFusesBf16(shape), true);
    const size_t floats =
        mlaDecompressedScratchFloats(shape, runs, budget, c.fusedBf16);
    scratch = deviceArray<float>(floats);
    std::unique_ptr<GemmRunner> gemm;
    ASSERT_FALSE(GemmRunner::create(nullptr, gemm));
    CudaStatus run =
        c.bf16Cache ? mlaDecompressed(*gemm, dQn, dQr, dCacheBf16, layout, dUk,
                                      dUv, shape, runs, scale, scratch, floats,
                                      budget, c.fusedBf16, split, bad)
                    : mlaDecompressed(*gemm, dQn, dQr, dCache, layout, dUk, dUv,
                                      shape, runs, scale, scratch, floats,
                                      budget, c.fusedBf16, split, bad);
    ASSERT_FALSE(run) << run.error;
  } else {
    scratch = deviceArray<float>(mlaSplitScratchFloats(shape, chunks));
    ASSERT_EQ(c.bf16Cache
                  ? mlaSplit(dQn, dQr, dCacheBf16, layout, dUk, dUv, shape,
                             chunks, scale, scratch, split, bad, nullptr)
                  : mlaSplit(dQn, dQr, dCache, layout, dUk, dUv, shape, chunks,
                             scale, scratch, split, bad, nullptr),
              cudaSuccess);
  }
  ASSERT_EQ(mlaF32(dQn, dQr, dCache, layout, dUk, dUv, tokens, c.heads, nope,
                   rope, latent, valueDim, maxVisible, scale, whole, bad,
                   nullptr),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<float> have = toHost(split, outCount),
                     want = toHost(whole, outCount);
  EXPECT_EQ(toHost(bad, 1)[0], 0);
  double worst = 0, range = 0;
  for (size_t i = 0; i < outCount; ++i) {
    worst = std::max(worst, double(std::fabs(have[i] - want[i])));
    range = std::max(range, double(std::fabs(want[i])));
  }
  // BF16 queries and rows: about 2^-9 relative per operand; TF32: 2^-11.
  const bool bf16 =
      c.tensorCores || c.fusedBf16 || c.decodeStep || c.fusedMaxVisible;
  std::printf(
      "%d heads, %d tokens%s%s%s%s%s: max abs difference %.3g of the "
      "largest output\n",
      c.heads, tokens, c.tensorCores ? ", tensor cores" : "",
      c.decompressed ? ", decompressed" : "", c.bf16Cache ? ", bf16 cache" : "",
      c.decodeStep ? ", decode step" : "",
      !c.fusedMaxVisible                          ? ""
      : c.fusedForm == MlaFusedForm::LatentSlices ? ", fused by latent slices"
                                                  : ", fused",
      worst / std::max(range, 1e-30));
  EXPECT_LE(worst, (bf16             ? 2e-2
                    : c.decompressed ? 5e-3
                                     : 1e-5) *
                       range)
      << c.heads << " heads, " << tokens << " tokens, " << chunks << " chunks"
      << (c.tensorCores ? ", tensor cores" : "")
      << (c.decompressed ? ", decompressed" : "")
      << (c.bf16Cache ? ", bf16 cache" : "")
      << (c.decodeStep ? ", decode step" : "")
      << (c.fusedMaxVisible ? ", fused" : "");
  for (const void *p :
       {static_cast<const void *>(dCache), static_cast<const void *>(dQn),
        static_cast<const void *>(dCacheBf16), (const void *)dQr,
        (const void *)dUk, (const void *)dUv, (const void *)split,
        (const void *)whole, (const void *)bad, (const void *)scratch,
        (const void *)layout.positions, (const void *)layout.sequences,
        (const void *)layout.pages, (const void *)layout.lengths})
    cudaFree(const_cast<void *>(p));
}

} // namespace

TEST(CudaMlaSplit, DecodeOverLongContextsMatchesWholeSequence) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  for (int heads : {16, 128})
    runCase({heads, {0, 1}, {700, 33}});
}

// Over a BF16 cache: a decode step on MlaDecode.cu's chunk kernel (16
// heads: mma.sync; 64 and 128: wgmma, TMA tiles of the session's pages),
// one token a sequence, 701 and 34 cached tokens (many chunks, a partial
// last tile, chunks past a sequence's end); and each other path reading
// the BF16 rows.
TEST(CudaMlaSplit, Bf16CacheMatchesWholeSequence) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  for (int heads : {16, 64, 128}) {
    Case step{heads, {0, 1}, {700, 33}};
    step.bf16Cache = step.decodeStep = true;
    runCase(step);
  }
  Case one{16, {0, 1}, {0, 130}}; // a sequence of one token
  one.bf16Cache = one.decodeStep = true;
  runCase(one);
  Case split{16, {0, 1}, {700, 33}};
  split.bf16Cache = true;
  runCase(split);
  Case prefill{16, {}, {}, true};
  prefill.bf16Cache = true;
  for (int32_t p = 0; p < 150; ++p) {
    prefill.sequences.push_back(p % 2);
    prefill.positions.push_back(p / 2 + (p % 2) * 300);
  }
  runCase(prefill);
  Case decompressed{16, {}, {}};
  decompressed.decompressed = decompressed.fusedBf16 = true;
  decompressed.bf16Cache = true;
  for (int32_t p = 0; p < 45; ++p) {
    decompressed.sequences.push_back(0);
    decompressed.positions.push_back(p);
  }
  runCase(decompressed);
}

// A few tokens' decode step in one kernel (MlaDecodeFused.cu: a token a
// sequence) against the whole-sequence kernel: tables of 1024, 256 and
// 320 positions, a sequence of one token, the last blocks' shares partial
// or empty, 16 and 128 heads; in both forms where the latent slices fit
// (tables of at most 512), and the slices refusing a longer table.
TEST(CudaMlaSplit, FusedDecodeMatchesWholeSequence) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  struct Fused {
    int heads, maxVisible;
    std::vector<int32_t> sequences, positions;
  };
  for (const Fused &f :
       {Fused{16, 1024, {0, 1}, {700, 33}}, Fused{128, 1024, {0, 1}, {1000, 3}},
        Fused{16, 256, {0, 1}, {200, 33}}, Fused{128, 320, {0, 1}, {319, 0}},
        Fused{16, 320, {1, 0}, {250, 6}}}) {
    for (MlaFusedForm form :
         {MlaFusedForm::Positions, MlaFusedForm::LatentSlices}) {
      if (form == MlaFusedForm::LatentSlices && f.maxVisible > 512)
        continue;
      Case c{f.heads, f.sequences, f.positions};
      c.bf16Cache = true;
      c.fusedMaxVisible = f.maxVisible;
      c.fusedForm = form;
      runCase(c);
    }
  }
  // A table of 1024 is not the latent slices' (refused before a launch:
  // the operands are never read).
  const MlaSplitShape longTable{2, 16, 128, 64, 512, 128, 1024};
  PagedLayout layout{};
  layout.batch = 2;
  const auto *unread = reinterpret_cast<const float *>(256);
  EXPECT_EQ(mlaDecodeFused(unread, unread,
                           reinterpret_cast<const __nv_bfloat16 *>(256), layout,
                           unread, unread, longTable, 1.f,
                           reinterpret_cast<float *>(256), nullptr, nullptr,
                           MlaEarlyReads::None, MlaFusedForm::LatentSlices),
            cudaErrorInvalidValue);
}

// A decode step of a few tokens: the narrow forms (blocks of 4 heads, W_UK
// in 8 parts a column, 8 value columns a block), also with a partial group
// of heads (18).
TEST(CudaMlaSplit, FewTokensTakeTheNarrowKernels) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  for (int heads : {16, 18}) {
    runCase({heads, {1}, {40}});
    runCase({heads, {0, 1}, {130, 7}});
  }
}

TEST(CudaMlaSplit, PrefillRowsMatchWholeSequence) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  Case c{16, {}, {}};
  for (int32_t p = 0; p < 90; ++p) {
    c.sequences.push_back(p % 2);
    c.positions.push_back(p / 2 + (p % 2) * 200);
  }
  runCase(c);
}

// A prefill on tensor cores (BF16): two sequences' causal rows, their
// tokens interleaved, against the F32 kernel: 16 heads (query groups of 4
// tokens), 32 (2) and 128 (1 token, four head tiles); then 37 and 21 tokens
// (groups padded at each sequence's end) in order.
TEST(CudaMlaSplit, PrefillOnTensorCoresMatchesWholeSequence) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  for (int heads : {16, 32, 128}) {
    Case c{heads, {}, {}, true};
    for (int32_t p = 0; p < 150; ++p) {
      c.sequences.push_back(p % 2);
      c.positions.push_back(p / 2 + (p % 2) * 300);
    }
    runCase(c);
  }
  Case uneven{16, {}, {}, true};
  for (int32_t p = 0; p < 37; ++p) {
    uneven.sequences.push_back(0);
    uneven.positions.push_back(p);
  }
  for (int32_t p = 0; p < 21; ++p) {
    uneven.sequences.push_back(1);
    uneven.positions.push_back(500 + p);
  }
  runCase(uneven);
}

// A prefill with K and V per head (MlaDecompressed.h): two sequences' runs
// (one continuing 200 cached rows) with 16 heads, one run with 128 heads,
// and the scores held for blocks of 16 queries.
TEST(CudaMlaSplit, PrefillDecompressedMatchesWholeSequence) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  Case two{16, {}, {}};
  two.decompressed = true;
  for (int32_t p = 0; p < 45; ++p) {
    two.sequences.push_back(0);
    two.positions.push_back(p);
  }
  for (int32_t p = 0; p < 40; ++p) {
    two.sequences.push_back(1);
    two.positions.push_back(200 + p);
  }
  runCase(two);
  Case wide{128, {}, {}};
  wide.decompressed = true;
  for (int32_t p = 0; p < 37; ++p) {
    wide.sequences.push_back(1);
    wide.positions.push_back(500 + p);
  }
  runCase(wide);
  two.scoreBudget = size_t(16) * 16 * 240;
  runCase(two);
  // The attention fused (BF16, scores on the chip): partial query blocks,
  // a run at position 0 and one after 200 cached rows, 16 and 128 heads.
  two.fusedBf16 = wide.fusedBf16 = true;
  runCase(two);
  runCase(wide);
  Case longer{16, {}, {}};
  longer.decompressed = longer.fusedBf16 = true;
  for (int32_t p = 0; p < 300; ++p) { // several key tiles and query blocks
    longer.sequences.push_back(0);
    longer.positions.push_back(p);
  }
  runCase(longer);
}

// The runs of a step the decompressed form takes: each sequence's tokens
// one contiguous run at consecutive positions.
TEST(CudaMlaSplit, DecompressedRunsAreContiguous) {
  std::vector<DecompressedQueries> runs;
  EXPECT_TRUE(decompressedRuns({0, 0, 0, 1, 1}, {5, 6, 7, 0, 1}, runs));
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[1].first, 3);
  EXPECT_EQ(runs[1].count, 2);
  EXPECT_EQ(runs[0].position, 5);
  EXPECT_FALSE(decompressedRuns({0, 1, 0}, {0, 0, 1}, runs)) << "interleaved";
  EXPECT_FALSE(decompressedRuns({0, 0}, {0, 2}, runs)) << "a gap";
  EXPECT_FALSE(decompressedRuns({0, -1}, {0, 1}, runs)) << "no sequence";
}

// The fused form's scratch: every run of a launch in scratch of its own
// (K and V of each sequence, then one attention launch for the group), so
// equal runs take their sum; past the budget (or kCausalMaxRuns runs) a
// new group starts, and the scratch is the largest group's. Host-side.
TEST(CudaMlaSplit, DecompressedScratchHoldsAGroupOfRuns) {
  const MlaSplitShape shape{8 * 1024, 16, 128, 64, 512, 128, 1024};
  const std::vector<DecompressedQueries> one = {{0, 0, 1024, 0}};
  std::vector<DecompressedQueries> eight;
  for (int b = 0; b < 8; ++b)
    eight.push_back({b, b * 1024, 1024, 0});
  const size_t budget = size_t(64) << 20;
  const size_t weights =
      mlaDecompressedScratchFloats(shape, {}, budget, /*bf16Fused=*/true);
  const size_t run =
      mlaDecompressedScratchFloats(shape, one, budget, true) - weights;
  ASSERT_GT(run, 0u);
  EXPECT_EQ(mlaDecompressedScratchFloats(shape, eight, budget, true),
            weights + 8 * run)
      << "eight runs side by side";
  // A budget of three runs: groups of three, three and two.
  EXPECT_EQ(mlaDecompressedScratchFloats(shape, eight, 3 * run, true),
            weights + 3 * run);
  // A budget below one run: one run a group.
  EXPECT_EQ(mlaDecompressedScratchFloats(shape, eight, run / 2, true),
            weights + run);
  // More runs than a launch takes: kCausalMaxRuns a group.
  std::vector<DecompressedQueries> many;
  for (int b = 0; b < kCausalMaxRuns + 3; ++b)
    many.push_back({b, b * 64, 64, 0});
  const size_t small =
      mlaDecompressedScratchFloats(shape, {many[0]}, budget, true) - weights;
  EXPECT_EQ(mlaDecompressedScratchFloats(shape, many, budget, true),
            weights + size_t(kCausalMaxRuns) * small);
}

// Tokens of one sequence far apart (not one prefill's consecutive
// positions): the tensor-core path says so instead of attending wrongly.
TEST(CudaMlaSplit, PrefillOnTensorCoresFlagsSpreadPositions) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  Case c{16, {0, 0, 1}, {0, 700, 5}, true, true};
  runCase(c);
}
