// A warpgroup's products over four blocks of k. With MELT_TEST_DIVERGENT
// they sit behind a branch on its threads (what the grouped BF16 kernel's
// first padding skip did), and ptxas serializes the wgmmas; without it,
// every thread takes the same path and nothing is serialized.
#include "cuda/Wgmma.cuh"

using namespace melt::rt::cuda;

__global__ void products(float *out, int rowsUsed) {
  __shared__ __align__(1024) uint8_t tiles[2 * 64 * 128];
  float d[64] = {};
#ifdef MELT_TEST_DIVERGENT
  const bool multiplies = rowsUsed > int(threadIdx.x / 128) * 64;
#else
  const bool multiplies = rowsUsed > 0; // the same for every thread
#endif
  for (int kb = 0; kb < 4; ++kb) {
    wgmmaFence();
    if (multiplies)
      wgmma64x128(d, kMajorDescriptor(tiles), kMajorDescriptor(tiles + 8192),
                  kb > 0);
    wgmmaCommit();
    wgmmaWait<0>();
    __syncthreads();
  }
  for (int i = 0; i < 64; ++i)
    out[threadIdx.x * 64 + i] = d[i];
}
