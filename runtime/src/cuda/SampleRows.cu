//===- SampleRows.cu - top-k / top-p sampling on the GPU ------------------===//
#include "cuda/SampleRows.h"

#include "SamplingMath.h"
#include "cuda/DependentLaunch.cuh"

#include <cstdint>

using namespace melt::rt::cuda;

namespace {

constexpr int kThreads = 1024, kSlots = 2 * kSampleMaxTopK;

/// An unsigned key in the order of the floats (NaN lowest).
__device__ __forceinline__ uint32_t orderKey(float f) {
  if (f != f)
    return 0;
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/// Block per row.
__global__ void __launch_bounds__(kThreads)
    sampleTopKKernel(const float *logits, int vocab, int topK,
                     float temperature, float topP, const uint32_t *draws,
                     int32_t *ids) {
  awaitPriorKernels();
  __shared__ unsigned histogram[256];
  __shared__ uint32_t prefix, prefixMask;
  __shared__ int remaining, taken, overflow;
  // Candidates: key << 32 | ~index (descending order = the host's order).
  __shared__ unsigned long long slots[kSlots];
  __shared__ double weights[kSampleMaxTopK];
  const int row = blockIdx.x, tid = threadIdx.x;
  const float *x = logits + size_t(row) * vocab;
  const int k = min(topK, vocab);
  if (tid == 0) {
    prefix = 0;
    prefixMask = 0;
    remaining = k;
    taken = 0;
    overflow = 0;
  }
  // The k-th largest key, 8 bits at a time from the top.
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = tid; b < 256; b += kThreads)
      histogram[b] = 0;
    __syncthreads();
    const uint32_t want = prefix, mask = prefixMask;
    for (int i = tid; i < vocab; i += kThreads) {
      const uint32_t key = orderKey(x[i]);
      if ((key & mask) == want)
        atomicAdd(&histogram[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      int above = 0;
      for (int b = 255; b >= 0; --b) {
        if (above + int(histogram[b]) >= remaining) {
          prefix |= uint32_t(b) << shift;
          prefixMask |= 255u << shift;
          remaining -= above;
          break;
        }
        above += int(histogram[b]);
      }
    }
    __syncthreads();
  }
  // Every key above the k-th, and every key equal to it (the lowest
  // indices of those are taken after the sort).
  const uint32_t threshold = prefix;
  for (int i = tid; i < kSlots; i += kThreads)
    slots[i] = 0;
  __syncthreads();
  for (int i = tid; i < vocab; i += kThreads) {
    const uint32_t key = orderKey(x[i]);
    if (key >= threshold) {
      const int slot = atomicAdd(&taken, 1);
      if (slot < kSlots)
        slots[slot] = (static_cast<unsigned long long>(key) << 32) |
                      (0xffffffffu - uint32_t(i));
      else
        overflow = 1;
    }
  }
  __syncthreads();
  if (overflow) {
    if (tid == 0)
      ids[row] = -1; // too many ties at the k-th logit: the host samples
    return;
  }
  // Bitonic sort, descending.
  for (int size = 2; size <= kSlots; size *= 2)
    for (int stride = size / 2; stride > 0; stride /= 2) {
      for (int i = tid; i < kSlots; i += kThreads) {
        const int j = i ^ stride;
        if (j > i) {
          const bool descending = (i & size) == 0;
          const unsigned long long a = slots[i], b = slots[j];
          if (descending ? a < b : a > b) {
            slots[i] = b;
            slots[j] = a;
          }
        }
      }
      __syncthreads();
    }
  auto indexOf = [&](int c) {
    return int(0xffffffffu - uint32_t(slots[c] & 0xffffffffu));
  };
  const double top = x[indexOf(0)];
  for (int c = tid; c < k; c += kThreads)
    weights[c] = exp((double(x[indexOf(c)]) - top) / double(temperature));
  __syncthreads();
  if (tid == 0) {
    ids[row] = indexOf(int(melt::rt::pickInNucleus(
        weights, size_t(k), topP, melt::rt::drawOfWords(draws + 2 * row))));
  }
}

} // namespace

cudaError_t melt::rt::cuda::sampleRowsTopK(const float *logits, int rows,
                                           int vocab, int topK,
                                           float temperature, float topP,
                                           const uint32_t *draws, int32_t *ids,
                                           cudaStream_t stream) {
  if (rows < 0 || vocab < 1 || topK < 1 || topK > kSampleMaxTopK ||
      !(temperature > 0.f))
    return cudaErrorInvalidValue;
  if (rows == 0)
    return cudaSuccess;
  launchOverlapped(sampleTopKKernel, rows, kThreads, 0, stream, logits, vocab,
                   topK, temperature, topP, draws, ids);
  return cudaGetLastError();
}
