//===- BenchUtil.h - what the CUDA kernel benchmarks share ------*- C++ -*-===//
//
// Exit-on-error checks, event timing, and the device's copy bandwidth
// (bytes read + written per second, as hf_baseline.py counts them): every
// benchmark prints it first, in the same run as its own figures.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_BENCH_CUDA_BENCHUTIL_H
#define MELT_BENCH_CUDA_BENCHUTIL_H

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#define CHECK(call)                                                            \
  do {                                                                         \
    cudaError_t e = (call);                                                    \
    if (e != cudaSuccess) {                                                    \
      std::fprintf(stderr, "%s: %s: %s\n", benchName, #call,                   \
                   cudaGetErrorString(e));                                     \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

namespace melt::bench {

/// A hash of an element index: the benchmarks' deterministic fill values.
__device__ inline uint32_t hashIndex(size_t i, uint32_t seed) {
  uint32_t x = uint32_t(i) * 2654435761u ^ seed;
  x ^= x >> 13;
  x *= 0x5bd1e995u;
  x ^= x >> 15;
  return x;
}

/// data[i] uniform in [-1, 1) from hashIndex(i, seed), F32 or BF16 (the
/// benchmarks' operands; a grid-stride loop).
template <typename T>
__global__ void fillRandom(T *data, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    data[i] = T((hashIndex(i, seed) & 0xffff) / 32768.f - 1.f);
}

/// Warm-up before a measurement: at least 3 calls and `minMs` of them.
/// The GPU is not at its steady clocks for the first tens of milliseconds
/// of work in a process: melt-bench-mla-decode's first shape (16 heads,
/// batch 64) ran 78.5-79.0% of copy in the first three measurements of a
/// process and 83-86% in every later one, whatever the page table or the
/// allocation (bench/results/mla_decode_warmup_s36_h200.txt). So the first
/// measurement of each timed call in a process (each call site's callable,
/// F: a benchmark's kind of launch) warms for 300 ms, later ones of it for
/// 10 ms.
template <typename F> void warmUp(const char *benchName, F &&f) {
  static bool warmed = false; // (one for each F)
  const double minMs = warmed ? 10 : 300;
  warmed = true;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0;; ++i) {
    f(i);
    if (i < 2 || i % 4 != 3)
      continue;
    CHECK(cudaDeviceSynchronize());
    const std::chrono::duration<double, std::milli> elapsed =
        std::chrono::steady_clock::now() - start;
    if (elapsed.count() >= minMs || i >= 100000)
      return;
  }
}

/// Milliseconds per call of f(i), i the call's index, after warmUp.
template <typename F> float timeMs(const char *benchName, F &&f, int iters) {
  warmUp(benchName, f);
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  CHECK(cudaEventRecord(start));
  for (int i = 0; i < iters; ++i)
    f(i);
  CHECK(cudaEventRecord(stop));
  CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  CHECK(cudaEventElapsedTime(&ms, start, stop));
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  return ms / iters;
}

/// The benchmark's only option left in argv, `--iters N` (default
/// `iters`); anything else prints the usage (`options`: all the
/// benchmark's) and exits with status 2.
inline int itersFromArgs(const char *benchName, int argc, char **argv,
                         int iters, const char *options = "[--iters N]") {
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) {
      iters = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s %s\n", benchName, options);
      std::exit(2);
    }
  }
  return iters;
}

/// The device's properties, after checking that there is one.
inline cudaDeviceProp openDevice(const char *benchName) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::fprintf(stderr, "%s: no CUDA device\n", benchName);
    std::exit(1);
  }
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  return prop;
}

/// Prints {"what": "copy_bw", ...} for a 2 GiB device-to-device copy.
inline void printCopyBandwidth(const char *benchName,
                               const cudaDeviceProp &prop, int iters) {
  size_t n = size_t(2) << 30;
  void *a, *b;
  CHECK(cudaMalloc(&a, n));
  CHECK(cudaMalloc(&b, n));
  float ms = timeMs(
      benchName,
      [&](int) { cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice); }, iters);
  std::printf("{\"what\": \"copy_bw\", \"gpu\": \"%s\", \"GBps\": %.1f}\n",
              prop.name, 2.0 * n / (ms * 1e-3) / 1e9);
  CHECK(cudaFree(a));
  CHECK(cudaFree(b));
}

} // namespace melt::bench

#endif // MELT_BENCH_CUDA_BENCHUTIL_H
