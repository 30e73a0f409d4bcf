// Benchmark of the CUDA device's GEMMs at DeepSeek-V3's projection shapes:
// FP8 e4m3 with 1x128 activation / 128x128 weight block scales (cuBLASLt,
// as the runtime runs them, activation quantization timed separately) and
// BF16, for M in {1, 16, 64, 128, 512, 4096, 8192}. Up to 8 tokens the
// FP8 GEMM ("fp8_us") is melt's small-M kernel, beyond cuBLASLt; for 16 to
// 64 tokens the small-M kernel's figure is given beside it, and up to 64
// the split-K wgmma kernel's (Fp8SplitKWgmma.cu: what the runtime runs
// from 9 to 16 tokens by default), with its plan (K ranges, blocks an SM). The
// device's copy bandwidth is measured in the same run; for small M the figure
// that matters is the weight bandwidth (weight bytes / time). Several copies of
// each weight are cycled through, so that no GEMM finds its weight in the 50 MB
// L2 cache left by the previous one. At M >= 4096 the energy per GEMM comes
// from NVML's counter over about a second. One JSON line each.
//
// --large takes M 4096 and 8192 alone, --small 1, 16, 32 and 64.
// --hot reads one copy of each weight every call (in L2 where it fits:
// what the products cost apart from the weights' trip from memory).
//
// Each shape's FP8 weight bytes are also read alone, with nothing else to
// do ("read_floor": a kernel that loads them 16 bytes at a time, the
// fastest of four grid sizes, the same copies in turn): launched plainly,
// each waiting for the last (a dependent chain's floor), and launched to
// start early, its loads before the wait (the floor with the launch and
// ramp hidden, as the runtime's kernels load their weights). What share
// of copy a product of these bytes could reach as one launch.
//
// --mini takes the shapes of the `mini` model's FP8 products instead (the
// fused down projection, q_b, o_proj, the dense MLP's gate/up and its down
// with K padded to 11264), for M in {1, 16, 32, 64}: what its decode steps
// run through the runner.
//
//   melt-bench-gemm [--iters N] [--quick] [--mini] [--large] [--small]
//                   [--hot]
#include "cuda/DependentLaunch.cuh"
#include "cuda/Energy.h"
#include "cuda/Fp8SplitKWgmma.h"
#include "cuda/Gemm.h"
#include "cuda/Quantize.h"

#include "BenchUtil.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

using namespace melt::rt::cuda;

static const char *benchName = "melt-bench-gemm";
#define CHECK_STATUS(call)                                                     \
  do {                                                                         \
    CudaStatus s = (call);                                                     \
    if (s) {                                                                   \
      std::fprintf(stderr, "melt-bench-gemm: %s\n", s.error.c_str());          \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

__global__ void fillBytes(uint8_t *data, size_t n, uint32_t seed,
                          uint8_t mask) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = melt::bench::hashIndex(i, seed);
    // mask keeps values finite: e4m3 0x7f/0xff are NaN, bf16 exponents
    // stay small.
    data[i] = uint8_t(x) & mask;
  }
}

__global__ void fillFloats(float *data, size_t n, float value) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    data[i] = value * (1 + (i % 7) * 0.01f);
}

/// Reads n16 16-byte pieces of w (grid-stride, four in flight a thread);
/// kEarly: every load before awaitPriorKernels (launched to start early),
/// else after it. The sink is written only if the bytes' XOR is one value,
/// so that the loads stay.
template <bool kEarly>
__global__ void readBytesKernel(const uint4 *w, size_t n16, unsigned *sink) {
  if (!kEarly)
    melt::rt::cuda::awaitPriorKernels();
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  uint32_t acc = 0;
  for (; i + 3 * stride < n16; i += 4 * stride) {
    const uint4 a = w[i], b = w[i + stride], c = w[i + 2 * stride],
                d = w[i + 3 * stride];
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^
           c.w ^ d.x ^ d.y ^ d.z ^ d.w;
  }
  for (; i < n16; i += stride) {
    const uint4 a = w[i];
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (kEarly)
    melt::rt::cuda::awaitPriorKernels();
  if (acc == 0x9e3779b9u)
    atomicAdd(sink, 1u);
}

/// Prints {"what": "read_floor", ...}: the fastest of 1, 2, 4 and 8 blocks
/// an SM reading `bytes` of each of the copies in turn, plainly and early.
void printReadFloor(const char *shape, const std::vector<uint8_t *> &copies,
                    size_t bytes, int sms, int iters) {
  unsigned *sink;
  CHECK(cudaMalloc(&sink, sizeof(unsigned)));
  const size_t n16 = bytes / 16;
  auto fastest = [&](bool early, int &bestBlocks) {
    float best = 0;
    for (int perSm : {1, 2, 4, 8}) {
      const int blocks = perSm * sms;
      const float ms = melt::bench::timeMs(
          benchName,
          [&](int i) {
            const auto *w =
                reinterpret_cast<const uint4 *>(copies[i % copies.size()]);
            if (early)
              CHECK(melt::rt::cuda::launchOverlapped(readBytesKernel<true>,
                                                     dim3(blocks), dim3(256), 0,
                                                     nullptr, w, n16, sink));
            else
              readBytesKernel<false><<<blocks, 256>>>(w, n16, sink);
          },
          iters);
      if (best == 0 || ms < best) {
        best = ms;
        bestBlocks = blocks;
      }
    }
    return best;
  };
  int plainBlocks = 0, earlyBlocks = 0;
  const float plainMs = fastest(false, plainBlocks);
  const float earlyMs = fastest(true, earlyBlocks);
  CHECK(cudaGetLastError());
  std::printf("{\"what\": \"read_floor\", \"shape\": \"%s\", \"bytes\": %zu, "
              "\"copies\": %zu, \"plain_us\": %.1f, \"plain_GBps\": %.1f, "
              "\"plain_blocks\": %d, \"early_us\": %.1f, \"early_GBps\": "
              "%.1f, \"early_blocks\": %d}\n",
              shape, bytes, copies.size(), plainMs * 1e3,
              bytes / (plainMs * 1e-3) / 1e9, plainBlocks, earlyMs * 1e3,
              bytes / (earlyMs * 1e-3) / 1e9, earlyBlocks);
  std::fflush(stdout);
  CHECK(cudaFree(sink));
}

int main(int argc, char **argv) {
  int iters = 20;
  bool quick = false, mini = false, large = false, hot = false, small = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--iters") && i + 1 < argc)
      iters = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--quick"))
      quick = true;
    else if (!std::strcmp(argv[i], "--mini"))
      mini = true;
    else if (!std::strcmp(argv[i], "--large"))
      large = true;
    else if (!std::strcmp(argv[i], "--hot"))
      hot = true;
    else if (!std::strcmp(argv[i], "--small"))
      small = true;
    else {
      std::fprintf(stderr,
                   "usage: melt-bench-gemm [--iters N] [--quick] [--mini] "
                   "[--large] [--small] [--hot]\n");
      return 2;
    }
  }
  cudaDeviceProp prop = melt::bench::openDevice(benchName);
  melt::bench::printCopyBandwidth(benchName, prop, iters);

  std::unique_ptr<GemmRunner> gemm;
  CHECK_STATUS(GemmRunner::create(nullptr, gemm));
  std::string why;
  std::unique_ptr<EnergyMeter> meter = EnergyMeter::open(0, why);
  if (!meter)
    std::printf("{\"what\": \"energy\", \"error\": \"%s\"}\n", why.c_str());
  struct Shape {
    const char *name;
    int n, k;
  };
  std::vector<Shape> shapes = {
      {"q_a+kv_a (fused down)", 2112, 7168},
      {"q_b", 24576, 1536},
      {"o_proj", 7168, 16384},
      {"dense gate/up", 18432, 7168},
      {"dense down", 7168, 18432},
      {"expert gate/up", 2048, 7168},
  };
  std::vector<int> ms = {1, 16, 64, 128, 512, 4096, 8192};
  if (quick)
    ms = {1, 64, 4096};
  if (large) // the prefill's M alone (cuBLASLt's)
    ms = {4096, 8192};
  if (small) // a decode step's M alone
    ms = {1, 16, 32, 64};
  if (mini) {
    shapes = {{"mini q_a+kv_a (fused down)", 2112, 2048},
              {"mini q_b", 3072, 1536},
              {"mini o_proj", 2048, 2048},
              {"mini dense gate/up", 21888, 2048},
              {"mini dense down", 2048, 11264}};
    ms = {1, 16, 32, 64};
  }
  const size_t rotateBytes = size_t(256) << 20;
  for (const Shape &shape : shapes) {
    size_t weightBytes = size_t(shape.n) * shape.k;
    int kBlocks = shape.k / 128, nBlocks = (shape.n + 127) / 128;
    int copies = hot ? 1
                     : int(std::min<size_t>(
                           16, std::max<size_t>(1, rotateBytes / weightBytes)));
    // FP8 weights (copies of them) and their scales; a BF16 weight too.
    std::vector<__nv_fp8_e4m3 *> w8(copies);
    std::vector<__nv_bfloat16 *> w16(copies);
    float *wScales;
    CHECK(cudaMalloc(&wScales, size_t(nBlocks) * kBlocks * 4));
    fillFloats<<<64, 256>>>(wScales, size_t(nBlocks) * kBlocks, 1e-3f);
    for (int c = 0; c < copies; ++c) {
      CHECK(cudaMalloc(&w8[c], weightBytes));
      CHECK(cudaMalloc(&w16[c], weightBytes * 2));
      fillBytes<<<1024, 256>>>(reinterpret_cast<uint8_t *>(w8[c]), weightBytes,
                               c + 1, 0x77);
      fillBytes<<<1024, 256>>>(reinterpret_cast<uint8_t *>(w16[c]),
                               weightBytes * 2, c + 7, 0x3f);
    }
    {
      std::vector<uint8_t *> bytes;
      for (__nv_fp8_e4m3 *w : w8)
        bytes.push_back(reinterpret_cast<uint8_t *>(w));
      printReadFloor(shape.name, bytes, weightBytes, prop.multiProcessorCount,
                     iters);
    }
    for (int m : ms) {
      size_t xValues = size_t(m) * shape.k;
      __nv_bfloat16 *x, *y;
      __nv_fp8_e4m3 *xq;
      float *xScales;
      CHECK(cudaMalloc(&x, xValues * 2));
      CHECK(cudaMalloc(&y, size_t(m) * shape.n * 2));
      CHECK(cudaMalloc(&xq, xValues));
      CHECK(cudaMalloc(&xScales, size_t(m) * kBlocks * 4));
      fillBytes<<<1024, 256>>>(reinterpret_cast<uint8_t *>(x), xValues * 2, 99,
                               0x3f);
      CHECK(quantizeRowsFp8(x, m, shape.k, xq, xScales, nullptr));
      double flops = 2.0 * m * shape.n * shape.k;
      // The runner's own kernels up to 8 tokens, cuBLASLt beyond (the
      // split-K wgmma kernel, the runner's choice for 9-16 by default, timed
      // apart).
      gemm->setSplitKRows(0);
      float fp8Ms = melt::bench::timeMs(
          benchName,
          [&](int i) {
            CHECK_STATUS(gemm->fp8BlockScaled(xq, xScales, w8[i % copies],
                                              wScales, y, m, shape.n, shape.k));
          },
          iters);
      // The small-M kernel where the runner picks cuBLASLt (16-64 tokens).
      float smallMs = 0;
      if (m > 8 && m <= 64) {
        gemm->setSmallMLimit(64);
        smallMs = melt::bench::timeMs(
            benchName,
            [&](int i) {
              CHECK_STATUS(gemm->fp8BlockScaled(xq, xScales, w8[i % copies],
                                                wScales, y, m, shape.n,
                                                shape.k));
            },
            iters);
        gemm->setSmallMLimit(8);
      }
      // The split-K wgmma kernel (Fp8SplitKWgmma.cu) up to 64 tokens (its
      // plan printed as 0 ranges where it does not run).
      const Fp8SplitKPlan plan =
          m <= kFp8SplitKWgmmaMax ? fp8SplitKWgmmaPlan(m, shape.n, shape.k,
                                                       prop.multiProcessorCount)
                                  : Fp8SplitKPlan{0, 0};
      float wgmmaMs = 0;
      if (m <= kFp8SplitKWgmmaMax)
        wgmmaMs = melt::bench::timeMs(
            benchName,
            [&](int i) {
              CHECK(fp8SplitKWgmma(xq, xScales, w8[i % copies], wScales, y, m,
                                   shape.n, shape.k, prop.multiProcessorCount,
                                   nullptr));
            },
            iters);
      float quantMs = melt::bench::timeMs(
          benchName,
          [&](int) {
            CHECK(quantizeRowsFp8(x, m, shape.k, xq, xScales, nullptr));
          },
          iters);
      float bf16Ms = melt::bench::timeMs(
          benchName,
          [&](int i) {
            CHECK_STATUS(
                gemm->bf16(x, w16[i % copies], y, false, m, shape.n, shape.k));
          },
          iters);
      // Energy at large M: the GEMM repeated for about a second, read from
      // NVML's energy counter before and after.
      double joulesPerCall = 0;
      if (meter && m >= 4096) {
        int calls = std::max(1, int(1.0 / (fp8Ms * 1e-3)));
        CHECK(cudaDeviceSynchronize());
        double before = meter->joules();
        for (int i = 0; i < calls; ++i)
          CHECK_STATUS(gemm->fp8BlockScaled(xq, xScales, w8[i % copies],
                                            wScales, y, m, shape.n, shape.k));
        CHECK(cudaDeviceSynchronize());
        double after = meter->joules();
        if (before >= 0 && after > before)
          joulesPerCall = (after - before) / calls;
      }
      std::printf(
          "{\"what\": \"gemm_melt\", \"shape\": \"%s\", \"m\": %d, \"n\": %d, "
          "\"k\": %d, \"fp8_us\": %.1f, \"fp8_tflops\": %.1f, "
          "\"fp8_weight_GBps\": %.1f, \"quantize_us\": %.1f, \"bf16_us\": "
          "%.1f, \"bf16_tflops\": %.1f, \"bf16_weight_GBps\": %.1f, "
          "\"weight_copies\": %d, \"fp8_small_m_kernel_us\": %.1f, "
          "\"fp8_small_m_kernel_weight_GBps\": %.1f, "
          "\"fp8_split_k_wgmma_us\": %.1f, "
          "\"fp8_split_k_wgmma_weight_GBps\": %.1f, "
          "\"fp8_split_k_plan\": \"%d ranges, %d blocks an SM\", "
          "\"fp8_joules\": %.4f, "
          "\"fp8_tflop_per_joule\": %.2f}\n",
          shape.name, m, shape.n, shape.k, fp8Ms * 1e3,
          flops / (fp8Ms * 1e-3) / 1e12,
          (weightBytes + nBlocks * kBlocks * 4.0) / (fp8Ms * 1e-3) / 1e9,
          quantMs * 1e3, bf16Ms * 1e3, flops / (bf16Ms * 1e-3) / 1e12,
          2.0 * weightBytes / (bf16Ms * 1e-3) / 1e9, copies, smallMs * 1e3,
          smallMs > 0 ? weightBytes / (smallMs * 1e-3) / 1e9 : 0.0,
          wgmmaMs * 1e3,
          wgmmaMs > 0 ? weightBytes / (wgmmaMs * 1e-3) / 1e9 : 0.0, plan.splits,
          plan.blocksPerSm, joulesPerCall,
          joulesPerCall > 0 ? flops / joulesPerCall / 1e12 : 0.0);
      std::fflush(stdout);
      CHECK(cudaFree(x));
      CHECK(cudaFree(y));
      CHECK(cudaFree(xq));
      CHECK(cudaFree(xScales));
    }
    for (int c = 0; c < copies; ++c) {
      CHECK(cudaFree(w8[c]));
      CHECK(cudaFree(w16[c]));
    }
    CHECK(cudaFree(wScales));
  }
  std::printf("{\"what\": \"gemm_plans\", \"cached_shapes\": %zu}\n",
              gemm->cachedShapes());
  return 0;
}
