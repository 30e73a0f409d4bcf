//===- WarpReduce.cuh - sums and maxima across a warp ----------*- CUDA -*-===//
#ifndef MELT_RUNTIME_CUDA_WARPREDUCE_CUH
#define MELT_RUNTIME_CUDA_WARPREDUCE_CUH

namespace melt::rt::cuda {

/// The sum of v over the warp's 32 lanes, in every lane.
__device__ __forceinline__ float warpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

/// The largest v over the warp's 32 lanes, in every lane.
__device__ __forceinline__ float warpMax(float v) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_WARPREDUCE_CUH
