//===- CudaTestUtil.h - helpers of the CUDA kernel tests --------*- C++ -*-===//
#ifndef MELT_RUNTIME_TESTS_CUDA_CUDATESTUTIL_H
#define MELT_RUNTIME_TESTS_CUDA_CUDATESTUTIL_H

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace melt::rt::cuda::test {

inline bool haveDevice() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

template <typename T> T *toDevice(const std::vector<T> &host) {
  T *device = nullptr;
  EXPECT_EQ(cudaMalloc(&device, host.size() * sizeof(T) + 16), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(device, host.data(), host.size() * sizeof(T),
                       cudaMemcpyHostToDevice),
            cudaSuccess);
  return device;
}

template <typename T> std::vector<T> toHost(const T *device, size_t count) {
  std::vector<T> host(count);
  EXPECT_EQ(cudaMemcpy(host.data(), device, count * sizeof(T),
                       cudaMemcpyDeviceToHost),
            cudaSuccess);
  return host;
}

/// Where each group's rows start in a grouped operand whose groups are
/// padded to `tile` rows: counts.size() + 1 entries, the first 0.
inline std::vector<int32_t> paddedGroupStarts(const std::vector<int> &counts,
                                              int tile) {
  std::vector<int32_t> starts(counts.size() + 1, 0);
  for (size_t e = 0; e < counts.size(); ++e)
    starts[e + 1] = starts[e] + (counts[e] + tile - 1) / tile * tile;
  return starts;
}

template <typename T> T *deviceArray(size_t count) {
  T *device = nullptr;
  EXPECT_EQ(cudaMalloc(&device, count * sizeof(T) + 16), cudaSuccess);
  return device;
}

/// How many of a's values differ from b's bit for bit (b as long as a).
inline int differingBits(const std::vector<float> &a,
                         const std::vector<float> &b) {
  int differ = 0;
  for (size_t i = 0; i < a.size(); ++i)
    differ += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return differ;
}

} // namespace melt::rt::cuda::test

#endif // MELT_RUNTIME_TESTS_CUDA_CUDATESTUTIL_H
