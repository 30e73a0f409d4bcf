//===- ExpertCombine.cuh - a token's expert rows, weighted and summed -----===//
//
// The combine of a token's routed experts (combineExpertRows) and the
// norm that does it in its residual add (CombinedRows, Elementwise.h) sum
// the same values in the same order, four columns at a time: the choices
// in order, each row's value (rounded to BF16 first where the combine
// rounds) times its weight added by one fused multiply-add, then the
// shared expert's value. Both kernels call these, so both give the same
// bits.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_EXPERTCOMBINE_CUH
#define MELT_RUNTIME_CUDA_EXPERTCOMBINE_CUH

#include "cuda/OperandAccess.cuh"

#include <cuda_bf16.h>

namespace melt::rt::cuda {

/// sum += w times four values of an expert's row (each rounded to BF16
/// first with combineBf16).
__device__ __forceinline__ void addWeightedFour(float4 &sum, float4 four,
                                                float w, bool combineBf16) {
  if (combineBf16)
    four = make_float4(__bfloat162float(__float2bfloat16(four.x)),
                       __bfloat162float(__float2bfloat16(four.y)),
                       __bfloat162float(__float2bfloat16(four.z)),
                       __bfloat162float(__float2bfloat16(four.w)));
  sum = make_float4(__fmaf_rn(w, four.x, sum.x), __fmaf_rn(w, four.y, sum.y),
                    __fmaf_rn(w, four.z, sum.z), __fmaf_rn(w, four.w, sum.w));
}

/// sum += four values of a shared expert's row.
__device__ __forceinline__ void addFour(float4 &sum, float4 four) {
  sum = make_float4(sum.x + four.x, sum.y + four.y, sum.z + four.z,
                    sum.w + four.w);
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_EXPERTCOMBINE_CUH
