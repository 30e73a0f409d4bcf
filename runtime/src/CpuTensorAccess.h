//===- CpuTensorAccess.h - element access for the CPU device ----*- C++ -*-===//
//
// Loads and stores of any tensor type as f32 for the CPU device's generic
// paths, and the f32 values of an operand where it has them directly.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CPUTENSORACCESS_H
#define MELT_RUNTIME_CPUTENSORACCESS_H

#include "Device.h"
#include "melt/numerics.h"

#include <cstring>

namespace melt::rt::cpu {

inline float load(const DeviceTensor &t, int64_t i) {
  switch (t.dtype) {
  case DType::F32:
    return static_cast<const float *>(t.data)[i];
  case DType::BF16:
    return bf16ToFloat(static_cast<const uint16_t *>(t.data)[i]);
  case DType::FP8E4M3:
    return fp8E4M3ToFloat(static_cast<const uint8_t *>(t.data)[i]);
  case DType::I32:
    return float(static_cast<const int32_t *>(t.data)[i]);
  }
  return 0.f;
}

inline void store(DeviceTensor &t, int64_t i, float v) {
  switch (t.dtype) {
  case DType::F32:
    static_cast<float *>(t.data)[i] = v;
    break;
  case DType::BF16:
    static_cast<uint16_t *>(t.data)[i] = floatToBF16(v);
    break;
  case DType::FP8E4M3:
    static_cast<uint8_t *>(t.data)[i] = floatToFp8E4M3(v);
    break;
  case DType::I32:
    static_cast<int32_t *>(t.data)[i] = static_cast<int32_t>(v);
    break;
  }
}

/// The f32 values of `t` if it is f32 with its values in memory (an
/// imported weight that was only multiplied keeps none), else null.
inline const float *floats(const DeviceTensor &t) {
  return t.dtype == DType::F32 ? static_cast<const float *>(t.data) : nullptr;
}
inline float *floats(DeviceTensor &t) {
  return t.dtype == DType::F32 ? static_cast<float *>(t.data) : nullptr;
}

/// The model weight behind an imported tensor, or null.
inline const WeightData *weightOf(const DeviceTensor &t) {
  return static_cast<const WeightData *>(t.prepared);
}

inline const int32_t *ints(const DeviceTensor &t) {
  return static_cast<const int32_t *>(t.data);
}

} // namespace melt::rt::cpu

#endif // MELT_RUNTIME_CPUTENSORACCESS_H
