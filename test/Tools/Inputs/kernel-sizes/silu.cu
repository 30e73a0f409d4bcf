// A kernel of four SiLU-muls for test/Tools/kernel-sizes.test: smaller in
// machine code with -ftz=true.
#include "cuda/Silu.cuh"

using melt::rt::cuda::siluTimes;

__global__ void fourSiluMuls(const float4 *gate, const float4 *up,
                             float4 *out) {
  const int i = threadIdx.x;
  const float4 g = gate[i], u = up[i];
  out[i] = make_float4(siluTimes(g.x, u.x), siluTimes(g.y, u.y),
                       siluTimes(g.z, u.z), siluTimes(g.w, u.w));
}
