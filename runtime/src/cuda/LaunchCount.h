//===- LaunchCount.h - kernels launched to start early ----------*- C++ -*-===//
//
// launchOverlapped counts its launches (any stream, the whole process), so
// that a device can tell whether the kernel it launched last is still the
// one just ahead of the next: whether that next kernel may read, before its
// wait, what every kernel before that one wrote (DependentLaunch.cuh).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_LAUNCHCOUNT_H
#define MELT_RUNTIME_CUDA_LAUNCHCOUNT_H

#include <atomic>
#include <cstdint>

namespace melt::rt::cuda {

inline std::atomic<uint64_t> &overlappedLaunchCount() {
  static std::atomic<uint64_t> count{0};
  return count;
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_LAUNCHCOUNT_H
