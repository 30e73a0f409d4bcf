// The grouped experts' row gather (gatherRows, ModelKernels.h): y[r] =
// x[rows[r]], rounded to BF16 where y is BF16. Every kernel it picks (a
// warp a row for BF16 y in 16-byte chunks, a block a row four values at a
// time, and the scalar one for rows off the 4-element grid) against the
// host's rounding, bit for bit; rows at or past `rowsUsed` left as they
// were. Skips without a device.
#include "cuda/ModelKernels.h"

#include "CudaTestUtil.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <ostream>
#include <random>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

struct GatherCase {
  int tokens, count, dim;
  bool bf16X, bf16Y;
  int rowsUsed = -1; // -1: every row written
};

void PrintTo(const GatherCase &c, std::ostream *os) {
  *os << c.tokens << " tokens into " << c.count << " rows of " << c.dim
      << (c.bf16X ? ", BF16 x" : ", F32 x")
      << (c.bf16Y ? ", BF16 y" : ", F32 y") << ", rows used " << c.rowsUsed;
}

class CudaGatherRows : public ::testing::TestWithParam<GatherCase> {};

TEST_P(CudaGatherRows, CopiesEachRowOfItsTokenAndLeavesTheRestAlone) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  const GatherCase c = GetParam();
  std::mt19937 rng(7);
  const std::vector<float> x = normalValues(size_t(c.tokens) * c.dim, 1.f, rng);
  std::vector<int32_t> rows(size_t(c.count));
  std::uniform_int_distribution<int> token(0, c.tokens - 1);
  for (int32_t &r : rows)
    r = token(rng);
  void *dX = valuesOnDevice(x, c.bf16X);
  int32_t *dRows = toDevice(rows);
  const size_t yBytes = size_t(c.count) * c.dim * (c.bf16Y ? 2 : 4);
  void *dY = deviceArray<uint8_t>(yBytes);
  ASSERT_EQ(cudaMemset(dY, 0x7f, yBytes), cudaSuccess); // the sentinel
  int32_t *dUsed = nullptr;
  if (c.rowsUsed >= 0)
    dUsed = toDevice(std::vector<int32_t>{c.rowsUsed});
  ASSERT_EQ(gatherRows({dX, c.bf16X}, dRows, c.count, c.dim, {dY, c.bf16Y},
                       nullptr, dUsed),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<uint8_t> y = toHost(static_cast<uint8_t *>(dY), yBytes);
  const int written = c.rowsUsed >= 0 ? std::min(c.count, c.rowsUsed) : c.count;
  int wrong = 0, touched = 0;
  for (int r = 0; r < c.count; ++r)
    for (int d = 0; d < c.dim; ++d) {
      const size_t i = size_t(r) * c.dim + d;
      // What x's value is as an element of y (BF16 x exact in either).
      float v = x[size_t(rows[size_t(r)]) * c.dim + d];
      if (c.bf16X || c.bf16Y)
        v = __bfloat162float(__float2bfloat16(v));
      // Its bytes as y holds them, against y's (the sentinel past the
      // rows written).
      const size_t element = c.bf16Y ? 2 : 4;
      uint32_t want = 0, got = 0;
      if (c.bf16Y) {
        const __nv_bfloat16 expect = __float2bfloat16(v);
        std::memcpy(&want, &expect, element);
      } else {
        std::memcpy(&want, &v, element);
      }
      std::memcpy(&got, &y[element * i], element);
      if (r < written)
        wrong += got != want;
      else
        touched += got != (c.bf16Y ? 0x7f7fu : 0x7f7f7f7fu);
    }
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(touched, 0);
  cudaFree(dX);
  cudaFree(dRows);
  cudaFree(dY);
  cudaFree(dUsed);
}

INSTANTIATE_TEST_SUITE_P(
    Kernels, CudaGatherRows,
    ::testing::Values(
        // A warp a row: BF16 and F32 x, mini's and V3's hidden sizes, rows
        // past the used ones left alone, a dim of fewer chunks than a warp.
        GatherCase{300, 1024, 2048, true, true},
        GatherCase{300, 1024, 2048, false, true, 896},
        GatherCase{50, 257, 7168, true, true, 130},
        GatherCase{40, 77, 136, false, true},
        // A block a row, four values a thread (F32 y; a dim not of 8s).
        GatherCase{100, 200, 2048, false, false, 128},
        GatherCase{100, 200, 2052, true, true},
        // The scalar kernel (a dim not of 4s).
        GatherCase{30, 65, 129, false, true, 33}));

} // namespace
