//===- Tensor.h - host tensors of the CPU device ----------------*- C++ -*-===//
#ifndef MELT_RUNTIME_TENSOR_H
#define MELT_RUNTIME_TENSOR_H

#include "Gemm.h"

#include <cstdint>
#include <memory>
#include <vector>

namespace melt::rt {

/// A dense row-major host tensor: floats (computed in f32) or integers
/// (token ids, positions, expert indices).
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
  std::vector<int64_t> ints;
  bool isInt = false;
  /// Rows of each sequence of a batch, [segments[b], segments[b + 1]), for
  /// tensors whose rows are not the batch's tokens (cached keys, values).
  std::vector<int64_t> segments;

  int rank() const { return static_cast<int>(shape.size()); }
  int64_t dim(int i) const { return shape[i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape)
      n *= d;
    return n;
  }
  /// Elements per leading index.
  int64_t rowSize() const { return shape.empty() || shape[0] == 0 ? 0 : numel() / shape[0]; }
};

/// A weight on the CPU device: f32 `data` for the kernels that read it
/// directly (embedding, norms, router), and prepacked GEMM operands, one
/// per matrix (stacked experts have one each), for the projections. A
/// weight only multiplied keeps no f32 copy.
struct WeightData {
  std::vector<int64_t> shape;
  std::vector<float> data;
  std::vector<std::unique_ptr<GemmWeight>> gemms;
};

} // namespace melt::rt

#endif // MELT_RUNTIME_TENSOR_H
