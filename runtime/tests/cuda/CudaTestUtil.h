//===- CudaTestUtil.h - helpers of the CUDA kernel tests --------*- C++ -*-===//
#ifndef MELT_RUNTIME_TESTS_CUDA_CUDATESTUTIL_H
#define MELT_RUNTIME_TESTS_CUDA_CUDATESTUTIL_H

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
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

/// `values` on the device, rounded to BF16 where asked (else F32).
inline void *valuesOnDevice(const std::vector<float> &values, bool bf16) {
  if (!bf16)
    return toDevice(values);
  std::vector<__nv_bfloat16> rounded(values.size());
  for (size_t i = 0; i < values.size(); ++i)
    rounded[i] = __float2bfloat16(values[i]);
  return toDevice(rounded);
}

/// `count` values of a normal distribution of deviation `scale`.
inline std::vector<float> normalValues(size_t count, float scale,
                                       std::mt19937 &rng) {
  std::normal_distribution<float> normal(0.f, scale);
  std::vector<float> v(count);
  for (float &e : v)
    e = normal(rng);
  return v;
}

/// How many of a's values differ from b's bit for bit (b as long as a).
inline int differingBits(const std::vector<float> &a,
                         const std::vector<float> &b) {
  int differ = 0;
  for (size_t i = 0; i < a.size(); ++i)
    differ += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return differ;
}

/// `count` values on the device, F32 or BF16 (widened).
inline std::vector<float> hostValues(const void *device, bool bf16,
                                     size_t count) {
  if (!bf16)
    return toHost(static_cast<const float *>(device), count);
  const std::vector<__nv_bfloat16> v =
      toHost(static_cast<const __nv_bfloat16 *>(device), count);
  std::vector<float> widened(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    widened[i] = __bfloat162float(v[i]);
  return widened;
}

/// What a one-row norm and the product of its y leave: the residual sum
/// (with an add), y and the product's rows.
struct NormProductOutputs {
  std::vector<float> sum, y, out;
};

/// A norm and product run as one kernel give the two kernels' bits: the
/// sum, y and the product's n rows (not all alike: not a product of
/// zeros).
inline void expectSameNormProduct(const NormProductOutputs &fused,
                                  const NormProductOutputs &apart, bool add,
                                  size_t n) {
  ASSERT_EQ(fused.out.size(), n);
  EXPECT_EQ(differingBits(fused.y, apart.y), 0);
  EXPECT_EQ(differingBits(fused.out, apart.out), 0);
  if (add)
    EXPECT_EQ(differingBits(fused.sum, apart.sum), 0);
  EXPECT_NE(fused.out.front(), fused.out.back());
}

} // namespace melt::rt::cuda::test

#endif // MELT_RUNTIME_TESTS_CUDA_CUDATESTUTIL_H
