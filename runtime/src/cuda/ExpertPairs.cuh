//===- ExpertPairs.cuh - a (token, choice) pair's expert -------*- CUDA -*-===//
//
// The row-by-row expert kernels run a block row per (token, choice) pair;
// every expert kernel hands a pair's weighted output to a PairOutput.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_EXPERTPAIRS_CUH
#define MELT_RUNTIME_CUDA_EXPERTPAIRS_CUH

#include <cstdint>

namespace melt::rt::cuda {

/// The expert this block's pair (blockIdx.x) chose, or -1 where the id is
/// out of range: then the first block of the pair sets *bad (the pair is
/// skipped).
__device__ __forceinline__ int expertOfPair(const int32_t *indices, int experts,
                                            int32_t *bad) {
  const int e = indices[blockIdx.x];
  if (e >= 0 && e < experts)
    return e;
  if (threadIdx.x == 0 && blockIdx.y == 0)
    *bad = 1;
  return -1;
}

/// Where the down kernels put a pair's weighted output values: added into
/// y ([tokens, dim], zeroed first) with F32 atomics, whose order varies from
/// run to run; or, where pairRows is given, into the pair's row of it
/// ([pairs, dim]), summed per token in choice order afterwards
/// (startPairOutput / finishPairOutput in ModelKernels.h): the same bits
/// every run.
struct PairOutput {
  float *y = nullptr;
  float *pairRows = nullptr;
  __device__ __forceinline__ void add(int pair, int choices, int dim, int j,
                                      float value) const {
    addRow(pair, pair / choices, dim, j, value);
  }
  /// Value j of the row of pair `pair`, token `token`'s (a shared expert's
  /// pairs follow the routed ones).
  __device__ __forceinline__ void addRow(int pair, int token, int dim, int j,
                                         float value) const {
    if (pairRows)
      pairRows[size_t(pair) * dim + j] = value;
    else
      atomicAdd(&y[size_t(token) * dim + j], value);
  }
};

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_EXPERTPAIRS_CUH
