//===- Device.h - the interface every device implements ---------*- C++ -*-===//
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

  // Data movement (any type): y = x with the same bytes (reshape); y = the
  // slice of x at `offset` along `axis` (split); or x written into y at
  // `offset` along `axis` (concat).
  virtual Status copy(const DeviceTensor &x, DeviceTensor &y) = 0;
  virtual Status slice(const DeviceTensor &x, int axis, int64_t offset,
                       DeviceTensor &y) = 0;
  virtual Status place(const DeviceTensor &x, int axis, int64_t offset,
                       DeviceTensor &y) = 0;

  // MLA and MoE, F32 for now. One sequence's latent cache is F32 [capacity,
  // L + R]: the normalized latent then the rotated RoPE key of each token.

  /// Writes latent [T, L] and ropeKey [T, R] (any shape of T * R values)
  /// at the rows `positions` (I32 [T]) of the cache. A position outside the
  /// cache is MELT_RESOURCE_EXHAUSTED, from this call or (a GPU, which does
  /// not wait for its kernels) from the next synchronize().
  virtual Status latentCacheAppend(const DeviceTensor &latent,
                                   const DeviceTensor &ropeKey,
                                   const DeviceTensor &positions,
                                   DeviceTensor &cache) = 0;
  /// Absorbed multi-head latent attention of one sequence: query t (heads
  /// qNope [T, H, N], qRope [T, H, R]) attends to cache rows [0, pos[t]];
  /// the latent query is W_UK[h]^T qNope, the output W_UV[h] (the
  /// softmax-weighted latents); wUk [H, N, L], wUv [H, V, L], out
  /// [T, H, V].
  virtual Status mla(const DeviceTensor &qNope, const DeviceTensor &qRope,
                     const DeviceTensor &cache, const DeviceTensor &positions,
                     const DeviceTensor &wUk, const DeviceTensor &wUv,
                     float scale, DeviceTensor &out) = 0;
  /// Routed experts: y[t] = sum_k w[t,k] down_e(silu(gate_e x) * up_e x),
  /// e = indices[t, k]; gate/up [E, I, D], down [E, D, I]. combineBf16
  /// rounds each expert's output to BF16 before the sum. An index outside
  /// the experts is an error from this call or the next synchronize().
  virtual Status moeExperts(const DeviceTensor &x, const DeviceTensor &indices,
                            const DeviceTensor &weights,
                            const DeviceTensor &gate, const DeviceTensor &up,
                            const DeviceTensor &down, bool combineBf16,
                            DeviceTensor &y) = 0;
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
Status copy(const DeviceTensor &x, const DeviceTensor &y);
/// For slice and place: `part` along `axis` of `whole` from `offset`.
Status axisPart(const char *kernel, const DeviceTensor &whole, int axis,
                int64_t offset, const DeviceTensor &part);
Status latentCacheAppend(const DeviceTensor &latent,
                         const DeviceTensor &ropeKey,
                         const DeviceTensor &positions,
                         const DeviceTensor &cache);
Status mla(const DeviceTensor &qNope, const DeviceTensor &qRope,
           const DeviceTensor &cache, const DeviceTensor &positions,
           const DeviceTensor &wUk, const DeviceTensor &wUv,
           const DeviceTensor &out);
Status moeExperts(const DeviceTensor &x, const DeviceTensor &indices,
                  const DeviceTensor &weights, const DeviceTensor &gate,
                  const DeviceTensor &up, const DeviceTensor &down,
                  const DeviceTensor &y);
/// The products of the dimensions before and after `axis`.
void axisExtents(const std::vector<int64_t> &shape, int axis, int64_t &outer,
                 int64_t &inner);
} // namespace check

} // namespace melt::rt

#endif // MELT_RUNTIME_DEVICE_H
