//===- CpuDevice.h - the CPU device -----------------------------*- C++ -*-===//
#ifndef MELT_RUNTIME_CPUDEVICE_H
#define MELT_RUNTIME_CPUDEVICE_H

#include "Device.h"

namespace melt::rt {

/// Host memory, kernels in C++ (FP32 math; BF16 and FP8 converted on load
/// and store with melt/numerics.h). F32 operands take vectorized paths
/// (VectorMath.h) and weights imported from a Model keep its prepacked
/// oneDNN GEMM operands (Gemm.h), so a session on this device runs at the
/// speed of the CPU's GEMMs; other types take a plain element-wise path.
/// (Not final: tests derive from it to watch what the executor asks.)
class CpuDevice : public Device {
public:
  std::string name() const override { return "cpu"; }
  std::string description() const override;

  Status allocate(DType type, std::vector<int64_t> shape,
                  DeviceTensor &out) override;
  void release(DeviceTensor &tensor) override;
  Status upload(const void *host, DeviceTensor &tensor) override;
  Status download(const DeviceTensor &tensor, void *host) override;
  Status synchronize() override { return Status::ok(); }
  Status importWeight(const WeightData &weight, DeviceTensor &out) override;

  bool takesRowPitch() const override { return true; }
  Status rmsNorm(const DeviceTensor &x, const DeviceTensor &gamma, float eps,
                 DeviceTensor &y) override;
  Status linear(const DeviceTensor &x, const DeviceTensor &w,
                DeviceTensor &y) override;
  Status roundToBf16(DeviceTensor &x) override;
  Status quantizeFp8(const DeviceTensor &x, DeviceTensor &q,
                     DeviceTensor &scales) override;
  Status linearFp8(const DeviceTensor &q, const DeviceTensor &scales,
                   const DeviceTensor &w, const DeviceTensor &wScales,
                   DeviceTensor &y) override;
  Status siluMul(const DeviceTensor &gate, const DeviceTensor &up,
                 DeviceTensor &y) override;
  Status add(const DeviceTensor &a, const DeviceTensor &b,
             DeviceTensor &y) override;
  Status embedding(const DeviceTensor &ids, const DeviceTensor &table,
                   DeviceTensor &y) override;
  Status rope(const DeviceTensor &x, const DeviceTensor &positions,
              const RopeParams &params, DeviceTensor &y) override;
  Status routeExperts(const DeviceTensor &logits, const DeviceTensor *bias,
                      const RouterParams &params, DeviceTensor &indices,
                      DeviceTensor &weights) override;
  Status copy(const DeviceTensor &x, DeviceTensor &y) override;
  Status slice(const DeviceTensor &x, int axis, int64_t offset,
               DeviceTensor &y) override;
  Status place(const DeviceTensor &x, int axis, int64_t offset,
               DeviceTensor &y) override;
  Status cacheAppend(const DeviceTensor &first, const DeviceTensor &second,
                     const CacheLayout &layout, DeviceTensor &cache) override;
  Status attention(const DeviceTensor &q, const DeviceTensor &cache,
                   const CacheLayout &layout, int64_t kvHeads, bool causal,
                   float scale, DeviceTensor &out) override;
  Status mla(const DeviceTensor &qNope, const DeviceTensor &qRope,
             const DeviceTensor &cache, const CacheLayout &layout,
             const DeviceTensor &wUk, const DeviceTensor &wUv, float scale,
             int64_t decompressAbove, DeviceTensor &out) override;
  /// F32; BF16 with MELT_CPU_BF16_LATENT_CACHE=1 (read when a model is
  /// placed on the device), for comparisons: how far a BF16 cache's
  /// rounding alone moves a model's logits.
  DType latentCacheType(const DeviceTensor &wUk, DType compiled) const override;
  Status quantizeBlocks(const DeviceTensor &x, int64_t block, DeviceTensor &q,
                        DeviceTensor &scales) override;
  Status dequantizeBlocks(const DeviceTensor &q, const DeviceTensor &scales,
                          int64_t block, DeviceTensor &y) override;
  Status moeExperts(const DeviceTensor &x, const DeviceTensor &indices,
                    const DeviceTensor &weights, const DeviceTensor &gate,
                    const DeviceTensor &up, const DeviceTensor &down,
                    bool combineBf16, DeviceTensor &y) override;
  Status argmaxRows(const DeviceTensor &logits, DeviceTensor &ids) override;
  Status sampleRows(const DeviceTensor &logits, const SamplingParams &params,
                    const DeviceTensor &draws, DeviceTensor &ids) override;
};

} // namespace melt::rt

#endif // MELT_RUNTIME_CPUDEVICE_H
