// The experts' combine (ModelKernels.h's combineExpertRows): the rows-ahead
// kernel against the four-values-a-thread one, bit for bit, over F32 and
// BF16 expert rows, with and without rounding them to BF16 first, with a
// shared expert's rows added, a choice whose expert was outside (row -1),
// mini's 6 choices and V3's 8. Kernel cases skip without a device.
#include "CudaTestUtil.h"
#include "cuda/ModelKernels.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

using namespace melt::rt::cuda;
using namespace melt::rt::cuda::test;

namespace {

struct Case {
  int tokens, choices, dim;
  bool rowsBf16, combineBf16, shared;
};

void expectRowsAheadIsByFour(const Case &c) {
  std::mt19937 rng(13);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int rows = c.tokens * c.choices + 5;
  std::vector<float> out(size_t(rows) * c.dim),
      weights(size_t(c.tokens) * c.choices);
  for (float &v : out)
    v = normal(rng);
  for (float &w : weights)
    w = normal(rng);
  std::vector<__nv_bfloat16> outBf16(out.size()),
      plus(size_t(c.tokens) * c.dim);
  for (size_t i = 0; i < out.size(); ++i)
    outBf16[i] = __float2bfloat16(out[i]);
  for (__nv_bfloat16 &p : plus)
    p = __float2bfloat16(normal(rng));
  std::vector<int32_t> rowOfPair(size_t(c.tokens) * c.choices);
  for (size_t p = 0; p < rowOfPair.size(); ++p)
    rowOfPair[p] = p % 7 == 3 ? -1 : int32_t(rng() % unsigned(rows));
  void *dOut = c.rowsBf16 ? static_cast<void *>(toDevice(outBf16))
                          : static_cast<void *>(toDevice(out));
  float *dWeights = toDevice(weights);
  int32_t *dRows = toDevice(rowOfPair);
  __nv_bfloat16 *dPlus = toDevice(plus);
  const size_t count = size_t(c.tokens) * c.dim;
  float *byFour = deviceArray<float>(count), *ahead = deviceArray<float>(count);
  for (bool rowsAhead : {false, true})
    ASSERT_EQ(combineExpertRows({dOut, c.rowsBf16}, dRows, dWeights, c.tokens,
                                c.choices, c.dim, c.combineBf16,
                                rowsAhead ? ahead : byFour, nullptr,
                                c.shared ? dPlus : nullptr, rowsAhead),
              cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> want = toHost(byFour, count),
                           have = toHost(ahead, count);
  for (size_t i = 0; i < count; ++i)
    ASSERT_EQ(have[i], want[i])
        << c.choices << " choices, dim " << c.dim << ": token " << i / c.dim
        << ", value " << i % c.dim;
  for (void *p :
       std::vector<void *>{dOut, dWeights, dRows, dPlus, byFour, ahead})
    cudaFree(p);
}

} // namespace

TEST(CudaCombineExpertRows, RowsAheadIsByFour) {
  if (!haveDevice())
    GTEST_SKIP() << "no CUDA device";
  expectRowsAheadIsByFour({300, 6, 2048, true, true, true});
  expectRowsAheadIsByFour({70, 8, 7168, false, true, false});
  expectRowsAheadIsByFour({33, 6, 256, false, false, true});
  expectRowsAheadIsByFour({5, 7, 1024, true, false, false});
  expectRowsAheadIsByFour({5, 12, 1024, true, false, false}); // by four
  expectRowsAheadIsByFour({9, 1, 4096, true, true, true}); // one choice
}
