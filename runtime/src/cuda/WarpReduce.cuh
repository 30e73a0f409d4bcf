//===- WarpReduce.cuh - sums and maxima across a warp or block -*- CUDA -*-===//
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

/// v reduced over the block (max or sum), in every thread; `slots` holds
/// a value per warp. Every thread of the block calls it.
template <bool kMax>
__device__ __forceinline__ float blockReduce(float v, float *slots) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warps = (blockDim.x + 31) / 32;
  v = kMax ? warpMax(v) : warpSum(v);
  __syncthreads(); // slots free (an earlier call's readers are done)
  if (lane == 0)
    slots[warp] = v;
  __syncthreads();
  float all = kMax ? -INFINITY : 0.f;
  for (int w = 0; w < warps; ++w)
    all = kMax ? fmaxf(all, slots[w]) : all + slots[w];
  return all;
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_WARPREDUCE_CUH
