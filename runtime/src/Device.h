//===- Device.h - the interface every device of the runtime implements -*- C++
//-*-===//
//
// A device owns memory and runs the model's kernels on tensors in that
// memory. The CPU device is always present; the CUDA device is built where
// nvcc is and present where a GPU is (HIP follows the same interface). One
// conformance suite (runtime/tests/DeviceConformanceTest.cpp) runs every
// kernel of every present device against double-precision references.
//
// Tensors are dense and row-major; the leading dimension is tokens. Compute
// is FP32 inside every kernel; BF16 tensors are rounded when written. FP8
// GEMM operands use DeepSeek-V3's block scales: activations [K/128, M]
// (one FP32 scale per 128 values of a row, the rows of one block column
// side by side), weights [ceil(N/128), K/128] (the checkpoint's
// weight_scale_inv).
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_DEVICE_H
#define MELT_RUNTIME_DEVICE_H

#include "KernelParams.h"
#include "Status.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace melt::rt {

enum class DType : uint8_t { F32, BF16, FP8E4M3, I32 };
size_t dtypeBytes(DType type);
const char *dtypeName(DType type);

/// A tensor in one device's memory (a view: the device that allocated it
/// frees it).
struct DeviceTensor {
  void *data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape)
      n *= d;
    return n;
  }
  size_t bytes() const { return size_t(numel()) * dtypeBytes(dtype); }
  int64_t rows() const { return shape.empty() ? 0 : shape.front(); }
  int64_t cols() const { return shape.empty() ? 0 : numel() / rows(); }
};

class Device {
public:
  virtual ~Device() = default;
  /// "cpu", "cuda:0".
  virtual std::string name() const = 0;
  /// A line about the hardware, for logs and benchmark output.
  virtual std::string description() const = 0;

  // Memory.
  virtual Status allocate(DType type, std::vector<int64_t> shape,
                          DeviceTensor &out) = 0;
  virtual void release(DeviceTensor &tensor) = 0;
  /// Copies `tensor.bytes()` bytes from the host into / out of the tensor.
  virtual Status upload(const void *host, DeviceTensor &tensor) = 0;
  virtual Status download(const DeviceTensor &tensor, void *host) = 0;
  /// Waits for the device's queued work; reports a fault that happened in
  /// it (a device that faulted stays failed: every later call reports it).
  virtual Status synchronize() = 0;

  // Kernels. Inputs and outputs are F32 or BF16 unless said otherwise; the
  // output is allocated by the caller with the right shape.

  /// y = x / sqrt(mean(x^2) + eps) * gamma, per row.
  virtual Status rmsNorm(const DeviceTensor &x, const DeviceTensor &gamma,
                         float eps, DeviceTensor &y) = 0;
  /// y[M, N] = x[M, K] w[N, K]^T (x and w of one type; y F32 or BF16).
  virtual Status linear(const DeviceTensor &x, const DeviceTensor &w,
                        DeviceTensor &y) = 0;
  /// FP8 e4m3 activations in 1x128 blocks: q [M, K] FP8E4M3, scales
  /// [K/128, M] F32 (amax / 448 per block).
  virtual Status quantizeFp8(const DeviceTensor &x, DeviceTensor &q,
                             DeviceTensor &scales) = 0;
  /// y[M, N] (BF16) = dequant(q) dequant(w)^T with block-scaled FP8
  /// operands; FP32 accumulation.
  virtual Status linearFp8(const DeviceTensor &q, const DeviceTensor &scales,
                           const DeviceTensor &w, const DeviceTensor &wScales,
                           DeviceTensor &y) = 0;
  /// y = silu(gate) * up.
  virtual Status siluMul(const DeviceTensor &gate, const DeviceTensor &up,
                         DeviceTensor &y) = 0;
  /// y = a + b.
  virtual Status add(const DeviceTensor &a, const DeviceTensor &b,
                     DeviceTensor &y) = 0;
  /// y[t] = table[ids[t]] (ids I32 [T]; an id outside the table is an
  /// error, reported by the CPU at once and by a GPU at the next
  /// synchronize()).
  virtual Status embedding(const DeviceTensor &ids, const DeviceTensor &table,
                           DeviceTensor &y) = 0;
  /// Rotary embedding of x [T, D] or [T, H, D] at positions (I32 [T]).
  virtual Status rope(const DeviceTensor &x, const DeviceTensor &positions,
                      const RopeParams &params, DeviceTensor &y) = 0;
  /// The experts of each token from router logits (F32 [T, E]; bias F32
  /// [E] or null): indices I32 [T, K], weights F32 [T, K] (routeToken).
  virtual Status routeExperts(const DeviceTensor &logits,
                              const DeviceTensor *bias,
                              const RouterParams &params, DeviceTensor &indices,
                              DeviceTensor &weights) = 0;
};

/// The devices present on this machine, "cpu" first.
std::vector<std::string> availableDevices();
/// Opens "cpu" or "cuda:N"; a clear error when it is absent (e.g. "no CUDA
/// device: <driver's reason>", or a runtime built without CUDA).
Status openDevice(const std::string &name, std::unique_ptr<Device> &out);

/// Shared checks of the kernels' operands, so that every device rejects the
/// same bad calls with the same messages.
namespace check {
Status sameShape(const char *kernel, const DeviceTensor &a,
                 const DeviceTensor &b);
Status floatType(const char *kernel, const char *operand,
                 const DeviceTensor &t);
Status rmsNorm(const DeviceTensor &x, const DeviceTensor &gamma,
               const DeviceTensor &y);
Status linear(const DeviceTensor &x, const DeviceTensor &w,
              const DeviceTensor &y);
Status quantizeFp8(const DeviceTensor &x, const DeviceTensor &q,
                   const DeviceTensor &scales);
Status linearFp8(const DeviceTensor &q, const DeviceTensor &scales,
                 const DeviceTensor &w, const DeviceTensor &wScales,
                 const DeviceTensor &y);
Status embedding(const DeviceTensor &ids, const DeviceTensor &table,
                 const DeviceTensor &y);
Status rope(const DeviceTensor &x, const DeviceTensor &positions,
            const RopeParams &params, const DeviceTensor &y);
Status routeExperts(const DeviceTensor &logits, const DeviceTensor *bias,
                    const RouterParams &params, const DeviceTensor &indices,
                    const DeviceTensor &weights);
} // namespace check

} // namespace melt::rt

#endif // MELT_RUNTIME_DEVICE_H
