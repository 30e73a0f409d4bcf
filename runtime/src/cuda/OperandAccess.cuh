//===- OperandAccess.cuh - F32 or BF16 operands in device code -*- CUDA -*-===//
//
// Loads and stores of the generic kernels' operands (Elementwise.h), whose
// element type is known only at run time: compute in FP32, round to BF16 on
// store where the result is BF16.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_OPERANDACCESS_CUH
#define MELT_RUNTIME_CUDA_OPERANDACCESS_CUH

#include "cuda/Elementwise.h"

#include <cuda_bf16.h>

namespace melt::rt::cuda {

__device__ __forceinline__ float load(Operand o, size_t i) {
  return o.bf16
             ? __bfloat162float(static_cast<const __nv_bfloat16 *>(o.data)[i])
             : static_cast<const float *>(o.data)[i];
}

__device__ __forceinline__ void store(Result r, size_t i, float v) {
  if (r.bf16)
    static_cast<__nv_bfloat16 *>(r.data)[i] = __float2bfloat16(v);
  else
    static_cast<float *>(r.data)[i] = v;
}

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_OPERANDACCESS_CUH
