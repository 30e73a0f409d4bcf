//===- Gemm.h - prepacked GEMMs of the CPU device ---------------*- C++ -*-===//
//
// y[M, N] = x[M, K] W[N, K]^T for one weight. With oneDNN the weight is
// reordered once, at load, into the blocked layout its matmul kernels want
// (the same for every M, checked on oneDNN 2.6: brg:avx512_core[_bf16]);
// primitives are created per M and cached. BF16 checkpoints compute in
// bf16 with f32 accumulation (activations rounded to bf16), everything else
// in f32. Without oneDNN, a plain f32 loop.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_GEMM_H
#define MELT_RUNTIME_GEMM_H

#include "Status.h"

#include <cstdint>
#include <memory>
#include <vector>

namespace melt::rt {

class GemmWeight {
public:
  /// Prepares W ([n, k] row-major, f32); `bf16` stores and multiplies it in
  /// bf16.
  static Status create(const float *w, int64_t n, int64_t k, bool bf16,
                       std::unique_ptr<GemmWeight> &out);
  ~GemmWeight();

  /// y = x W^T for m rows of x.
  Status multiply(const float *x, int64_t m, float *y) const;
  int64_t rows() const { return n_; }
  int64_t cols() const { return k_; }
  uint64_t bytes() const;
  /// Whether an optimized library runs the GEMMs ("onednn") or the plain
  /// fallback ("reference").
  static const char *backend();

private:
  GemmWeight() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t n_ = 0, k_ = 0;
};

} // namespace melt::rt

#endif // MELT_RUNTIME_GEMM_H
