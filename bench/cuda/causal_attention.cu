// Benchmark of the fused causal attention of a prefill (CausalAttention.h)
// at the shapes of mini's and DeepSeek-V3's prefill (MLA's 128 + 64 query
// and key dims, 128 value dims, decompressed), each sequence a run of one
// launch, on both kernels (mma.sync and wgmma). FLOPs count the causal products
// only (query i against its i + 1 keys: 2 x (192 + 128) a key and head). Prints
// one JSON line per measurement, with the queries split (F32) and as the
// model gives them (the projection's BF16 rows, rotated by the kernel);
// bench/cuda/causal_attention_torch.py times torch's
// scaled_dot_product_attention at the same shapes.
//
//   melt-bench-causal-attention [--iters N]
#include "cuda/CausalAttention.h"

#include "BenchUtil.h"

#include <cmath>
#include <cstdio>
#include <vector>

using namespace melt::rt::cuda;

static const char *benchName = "melt-bench-causal-attention";

int main(int argc, char **argv) {
  const int iters = melt::bench::itersFromArgs(benchName, argc, argv, 20);
  cudaDeviceProp prop = melt::bench::openDevice(benchName);
  (void)prop;
  constexpr int kNope = 128, kRope = 64, kValue = 128;
  struct Shape {
    int sequences, tokens, heads;
  } shapes[] = {{8, 1024, 16},
                {1, 1024, 16},
                {1, 4096, 16},
                {8, 1024, 128},
                {1, 4096, 128}};
  for (const Shape &shape : shapes) {
    const size_t tokens = size_t(shape.sequences) * shape.tokens;
    float *qNope, *qRope, *out;
    __nv_bfloat16 *keys, *values;
    const size_t keyValues =
        size_t(shape.heads) * shape.tokens * (kNope + kRope);
    const size_t valueValues = size_t(shape.heads) * shape.tokens * kValue;
    CHECK(cudaMalloc(&qNope, tokens * shape.heads * kNope * 4));
    CHECK(cudaMalloc(&qRope, tokens * shape.heads * kRope * 4));
    CHECK(cudaMalloc(&out, tokens * shape.heads * kValue * 4));
    CHECK(cudaMalloc(&keys, keyValues * shape.sequences * 2));
    CHECK(cudaMalloc(&values, valueValues * shape.sequences * 2));
    melt::bench::fillRandom<<<1024, 256>>>(qNope, tokens * shape.heads * kNope,
                                           1);
    melt::bench::fillRandom<<<1024, 256>>>(qRope, tokens * shape.heads * kRope,
                                           2);
    melt::bench::fillRandom<<<1024, 256>>>(keys, keyValues * shape.sequences,
                                           3);
    melt::bench::fillRandom<<<1024, 256>>>(values,
                                           valueValues * shape.sequences, 4);
    std::vector<CausalRunOperands> runs;
    for (int s = 0; s < shape.sequences; ++s)
      runs.push_back({{s * shape.tokens, shape.tokens, 0, shape.tokens},
                      keys + s * keyValues,
                      values + s * valueValues});
    const double flops = 2.0 * (kNope + kRope + kValue) * shape.heads *
                         shape.sequences * double(shape.tokens) *
                         (shape.tokens + 1) / 2;
    // Both kernels on one form of the queries, a JSON line each.
    auto timeBothKernels = [&](const char *queries, auto launch) {
      for (CausalKernel kernel :
           {CausalKernel::Warps, CausalKernel::Warpgroups}) {
        float ms = melt::bench::timeMs(
            benchName, [&](int) { CHECK(launch(kernel)); }, iters);
        std::printf("{\"what\": \"causal_attention_melt\", \"kernel\": "
                    "\"%s\", \"queries\": \"%s\", \"sequences\": %d, "
                    "\"tokens\": %d, \"heads\": %d, \"us\": %.1f, "
                    "\"tflops\": %.1f}\n",
                    kernel == CausalKernel::Warps ? "mma.sync" : "wgmma",
                    queries, shape.sequences, shape.tokens, shape.heads,
                    ms * 1e3, flops / (ms * 1e-3) / 1e12);
      }
    };
    timeBothKernels("split F32", [&](CausalKernel kernel) {
      return causalAttentionBf16(qNope, qRope, runs.data(), int(runs.size()),
                                 shape.heads, kNope, kRope, kValue, 0.0721688f,
                                 out, nullptr, nullptr, kernel);
    });
    // The model's form: the queries as the projection leaves them, BF16,
    // rotated by the kernel (each sequence at positions 0..tokens - 1).
    __nv_bfloat16 *projectedRows;
    int32_t *positions;
    CHECK(
        cudaMalloc(&projectedRows, tokens * shape.heads * (kNope + kRope) * 2));
    CHECK(cudaMalloc(&positions, tokens * sizeof(int32_t)));
    melt::bench::fillRandom<<<1024, 256>>>(
        projectedRows, tokens * shape.heads * (kNope + kRope), 5);
    std::vector<int32_t> hostPositions(tokens);
    for (size_t t = 0; t < tokens; ++t)
      hostPositions[t] = int32_t(t % size_t(shape.tokens));
    CHECK(cudaMemcpy(positions, hostPositions.data(), tokens * sizeof(int32_t),
                     cudaMemcpyHostToDevice));
    CausalProjectedQuery projected;
    projected.qBf16 = projectedRows;
    projected.positions = positions;
    for (int i = 0; i < kRope / 2; ++i)
      projected.inverse[i] = std::pow(10000.0, -2.0 * i / kRope);
    timeBothKernels("projected BF16, rotated", [&](CausalKernel kernel) {
      return causalAttentionBf16(projected, runs.data(), int(runs.size()),
                                 shape.heads, kNope, kRope, kValue, 0.0721688f,
                                 out, nullptr, nullptr, kernel);
    });
    // The same with the rope part rotated ahead, once for every head
    // (MELT_CUDA_CAUSAL_ROPE_AHEAD): the attention on the rotated rows, and
    // the rotating kernel alone.
    __nv_bfloat16 *rotated;
    CHECK(cudaMalloc(&rotated, tokens * shape.heads * kRope * 2));
    CHECK(causalRotateQueryRope(projected, int(tokens), shape.heads, kNope,
                                rotated, nullptr));
    CausalProjectedQuery rotatedAhead = projected;
    rotatedAhead.ropeRotated = rotated;
    timeBothKernels(
        "projected BF16, rope rotated ahead", [&](CausalKernel kernel) {
          return causalAttentionBf16(
              rotatedAhead, runs.data(), int(runs.size()), shape.heads, kNope,
              kRope, kValue, 0.0721688f, out, nullptr, nullptr, kernel);
        });
    const float rotateMs = melt::bench::timeMs(
        benchName,
        [&](int) {
          CHECK(causalRotateQueryRope(projected, int(tokens), shape.heads,
                                      kNope, rotated, nullptr));
        },
        iters);
    std::printf("{\"what\": \"causal_rope_ahead_melt\", \"sequences\": %d, "
                "\"tokens\": %d, \"heads\": %d, \"us\": %.1f}\n",
                shape.sequences, shape.tokens, shape.heads, rotateMs * 1e3);
    CHECK(cudaFree(rotated));
    CHECK(cudaFree(projectedRows));
    CHECK(cudaFree(positions));
    CHECK(cudaFree(qNope));
    CHECK(cudaFree(qRope));
    CHECK(cudaFree(out));
    CHECK(cudaFree(keys));
    CHECK(cudaFree(values));
  }
  return 0;
}
