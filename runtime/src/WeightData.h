//===- WeightData.h - a model weight on the host ----------------*- C++ -*-===//
#ifndef MELT_RUNTIME_WEIGHTDATA_H
#define MELT_RUNTIME_WEIGHTDATA_H

#include "Gemm.h"

#include <cstdint>
#include <memory>
#include <vector>

namespace melt::rt {

/// A weight as the model loads it: f32 `data` for the kernels that read it
/// directly (embedding, norms, router, MLA's W_UK/W_UV), and prepacked CPU
/// GEMM operands, one per matrix (stacked experts have one each), for the
/// projections. A weight only multiplied keeps no f32 copy unless the model
/// is loaded for another device (keepHostData), which uploads `data`.
struct WeightData {
  /// How the compiled model keeps a weight (its checkpoint's type, or
  /// melt-assign-precision's storage); `data` holds the values it takes
  /// there, in f32.
  enum class Storage : uint8_t { F32, BF16, FP8Blocks };

  std::vector<int64_t> shape;
  std::vector<float> data;
  std::vector<std::unique_ptr<GemmWeight>> gemms;
  Storage storage = Storage::F32;
  /// Only ever an operand of GEMMs (projections, experts), never read by
  /// another kernel: a device may keep it in its storage type.
  bool gemmOnly = false;
  /// How a device of the artifact's target keeps it (melt-select-kernels;
  /// Unset: the device decides). Values are those of `data` either way: a
  /// format that cannot hold them exactly is not chosen.
  enum class DeviceFormat : uint8_t { Unset, F32, BF16, Fp8Blocks };
  DeviceFormat deviceFormat = DeviceFormat::Unset;
};

} // namespace melt::rt

#endif // MELT_RUNTIME_WEIGHTDATA_H
