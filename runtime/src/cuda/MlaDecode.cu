//===- MlaDecode.cu - MLA decode over the paged latent cache ---------------===//
//
// One thread block takes 16 heads of one sequence over one chunk of its
// cache, 64 tokens at a time: the tile is copied to shared memory once and
// serves all 16 heads, so the cache is read once per 16 heads. Scores and
// the weighted sum run on the tensor cores (mma.sync m16n8k16, BF16 in, FP32
// out) with an online softmax over the tiles. Each chunk leaves an
// unnormalized [16, 512] sum with its running max and sum; a combine kernel
// merges the chunks.
//
//===----------------------------------------------------------------------===//
#include "cuda/MlaDecode.h"

#include <algorithm>
#include <cfloat>

namespace melt::rt::cuda {
namespace {

constexpr int kHeadsPerBlock = 16; // the M of one mma tile
constexpr int kTileTokens = 64;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// Shared-memory rows padded by 8 BF16 (16 bytes): rows 1168 bytes apart
// put the 8 rows one fragment load touches in different banks.
constexpr int kRowStride = kLatentEntry + 8;
constexpr int kProbStride = kTileTokens + 8;

struct SharedTile {
  __nv_bfloat16 cache[kTileTokens * kRowStride];
  __nv_bfloat16 queries[kHeadsPerBlock * kRowStride];
  float scores[kHeadsPerBlock * kTileTokens];
  __nv_bfloat16 probs[kHeadsPerBlock * kProbStride];
  float rescale[kHeadsPerBlock];
};

__device__ inline uint32_t loadPair(const __nv_bfloat16 *p) {
  return *reinterpret_cast<const uint32_t *>(p);
}

__device__ inline uint32_t packPair(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(lo)) |
         (static_cast<uint32_t>(__bfloat16_as_ushort(hi)) << 16);
}

/// acc += A[16x16] * B[16x8] (A row-major, B column-major fragments).
__device__ inline void mma16816(float (&acc)[4], const uint32_t (&a)[4],
                                uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
               "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0),
                 "r"(b1));
}

/// A fragment of rows [0,16) and columns [k, k+16) of a row-major matrix.
__device__ inline void loadA(uint32_t (&a)[4], const __nv_bfloat16 *m,
                             int stride, int k, int lane) {
  int row = lane >> 2, col = k + (lane & 3) * 2;
  a[0] = loadPair(m + row * stride + col);
  a[1] = loadPair(m + (row + 8) * stride + col);
  a[2] = loadPair(m + row * stride + col + 8);
  a[3] = loadPair(m + (row + 8) * stride + col + 8);
}

__device__ inline void copy16(void *sharedDst, const void *globalSrc) {
  uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(sharedDst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst),
               "l"(globalSrc));
}

__global__ void __launch_bounds__(kThreads)
    mlaDecodeChunks(MlaDecodeArgs args, int chunkTokens, int chunks,
                    float *partialSums, float2 *partialStats) {
  extern __shared__ __align__(16) unsigned char sharedBytes[];
  SharedTile &s = *reinterpret_cast<SharedTile *>(sharedBytes);
  const int chunk = blockIdx.x, headGroup = blockIdx.y, seq = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int length = args.lengths[seq];
  const int begin = chunk * chunkTokens;
  const int end = min(length, begin + chunkTokens);
  const int head0 = headGroup * kHeadsPerBlock;

  // The 16 queries of this block.
  const __nv_bfloat16 *q =
      args.queries + (size_t(seq) * args.heads + head0) * kLatentEntry;
  for (int i = threadIdx.x; i < kHeadsPerBlock * kLatentEntry / 8;
       i += kThreads) {
    int row = i / (kLatentEntry / 8), col = (i % (kLatentEntry / 8)) * 8;
    copy16(&s.queries[row * kRowStride + col], q + row * kLatentEntry + col);
  }
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::);

  // Row statistics, kept by the 8 threads that own a head in the softmax.
  float runningMax = -FLT_MAX, runningSum = 0;
  // This warp's output columns [warp*128, warp*128+128): 16 mma tiles.
  float acc[16][4] = {};

  const int32_t *pages =
      args.blockTable + size_t(seq) * args.maxPagesPerSequence;
  for (int t0 = begin; t0 < end; t0 += kTileTokens) {
    // Tile copy: 64 tokens x 72 chunks of 16 bytes; tokens past the end are
    // zeros (their scores are masked below).
    const __nv_bfloat16 *tile =
        args.cache +
        (size_t(pages[t0 / args.pageSize]) * args.pageSize +
         t0 % args.pageSize) *
            kLatentEntry;
    for (int i = threadIdx.x; i < kTileTokens * kLatentEntry / 8;
         i += kThreads) {
      int token = i / (kLatentEntry / 8), col = (i % (kLatentEntry / 8)) * 8;
      __nv_bfloat16 *dst = &s.cache[token * kRowStride + col];
      if (t0 + token < end)
        copy16(dst, tile + token * kLatentEntry + col);
      else
        *reinterpret_cast<uint4 *>(dst) = make_uint4(0, 0, 0, 0);
    }
    asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::);
    __syncthreads();

    // Scores of this warp's 16 tokens: [16 heads, 576] x [576, 16].
    {
      float score[2][4] = {};
      const __nv_bfloat16 *keys = s.cache + warp * 16 * kRowStride;
      int keyRow = lane >> 2, keyCol = (lane & 3) * 2;
#pragma unroll 4
      for (int k = 0; k < kLatentEntry; k += 16) {
        uint32_t a[4];
        loadA(a, s.queries, kRowStride, k, lane);
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          const __nv_bfloat16 *key = keys + (n * 8 + keyRow) * kRowStride;
          mma16816(score[n], a, loadPair(key + k + keyCol),
                   loadPair(key + k + keyCol + 8));
        }
      }
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          int head = (lane >> 2) + (r >= 2 ? 8 : 0);
          int token = warp * 16 + n * 8 + (lane & 3) * 2 + (r & 1);
          s.scores[head * kTileTokens + token] =
              t0 + token < end ? score[n][r] * args.scale : -FLT_MAX;
        }
    }
    __syncthreads();

    // Online softmax: 8 threads per head, 8 tokens each.
    {
      int head = threadIdx.x / 8, part = threadIdx.x % 8;
      const float *row = s.scores + head * kTileTokens + part * 8;
      float tileMax = -FLT_MAX;
#pragma unroll
      for (int i = 0; i < 8; ++i)
        tileMax = fmaxf(tileMax, row[i]);
#pragma unroll
      for (int offset = 4; offset > 0; offset /= 2)
        tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffff, tileMax, offset));
      float newMax = fmaxf(runningMax, tileMax);
      float sum = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        float p = row[i] == -FLT_MAX ? 0.f : __expf(row[i] - newMax);
        // The sum counts the rounded weights that the tensor cores use.
        __nv_bfloat16 rounded = __float2bfloat16(p);
        s.probs[head * kProbStride + part * 8 + i] = rounded;
        sum += __bfloat162float(rounded);
      }
#pragma unroll
      for (int offset = 4; offset > 0; offset /= 2)
        sum += __shfl_xor_sync(0xffffffff, sum, offset);
      float factor = __expf(runningMax - newMax);
      runningSum = runningSum * factor + sum;
      runningMax = newMax;
      if (part == 0)
        s.rescale[head] = factor;
    }
    __syncthreads();

    // Weighted sum of the c_kv parts: [16, 64] x [64, this warp's 128].
    {
      int row = lane >> 2;
      float lo = s.rescale[row], hi = s.rescale[row + 8];
#pragma unroll
      for (int n = 0; n < 16; ++n) {
        acc[n][0] *= lo;
        acc[n][1] *= lo;
        acc[n][2] *= hi;
        acc[n][3] *= hi;
      }
      int tokenPair = (lane & 3) * 2, column = warp * 128 + (lane >> 2);
#pragma unroll
      for (int k = 0; k < kTileTokens; k += 16) {
        uint32_t a[4];
        loadA(a, s.probs, kProbStride, k, lane);
        const __nv_bfloat16 *v0 = s.cache + (k + tokenPair) * kRowStride;
        const __nv_bfloat16 *v1 = v0 + kRowStride;
        const __nv_bfloat16 *v8 = v0 + 8 * kRowStride;
        const __nv_bfloat16 *v9 = v8 + kRowStride;
#pragma unroll
        for (int n = 0; n < 16; ++n) {
          int c = column + n * 8;
          mma16816(acc[n], a, packPair(v0[c], v1[c]), packPair(v8[c], v9[c]));
        }
      }
    }
    __syncthreads();
  }

  // This chunk's unnormalized sums and statistics.
  size_t slot = (size_t(seq) * chunks + chunk) * args.heads + head0;
  float *out = partialSums + slot * kLatentRank;
  int row = lane >> 2;
#pragma unroll
  for (int n = 0; n < 16; ++n) {
    int col = warp * 128 + n * 8 + (lane & 3) * 2;
    *reinterpret_cast<float2 *>(out + row * kLatentRank + col) =
        make_float2(acc[n][0], acc[n][1]);
    *reinterpret_cast<float2 *>(out + (row + 8) * kLatentRank + col) =
        make_float2(acc[n][2], acc[n][3]);
  }
  if (threadIdx.x % 8 == 0)
    partialStats[slot + threadIdx.x / 8] =
        make_float2(begin < end ? runningMax : -FLT_MAX, runningSum);
}

/// One block per (sequence, head): merges the chunks.
__global__ void mlaDecodeCombine(MlaDecodeArgs args, int chunks,
                                 const float *partialSums,
                                 const float2 *partialStats) {
  const int head = blockIdx.x, seq = blockIdx.y;
  float maxAll = -FLT_MAX;
  for (int c = 0; c < chunks; ++c)
    maxAll = fmaxf(
        maxAll,
        partialStats[(size_t(seq) * chunks + c) * args.heads + head].x);
  float total = 0;
  float sums[kLatentRank / 128] = {};
  for (int c = 0; c < chunks; ++c) {
    size_t slot = (size_t(seq) * chunks + c) * args.heads + head;
    float2 stats = partialStats[slot];
    if (stats.x == -FLT_MAX)
      continue;
    float weight = __expf(stats.x - maxAll);
    total += weight * stats.y;
    const float *part = partialSums + slot * kLatentRank;
#pragma unroll
    for (int i = 0; i < kLatentRank / 128; ++i)
      sums[i] += weight * part[threadIdx.x + i * 128];
  }
  float inverse = total > 0 ? 1.f / total : 0.f;
  __nv_bfloat16 *out =
      args.output + (size_t(seq) * args.heads + head) * kLatentRank;
#pragma unroll
  for (int i = 0; i < kLatentRank / 128; ++i)
    out[threadIdx.x + i * 128] = __float2bfloat16(sums[i] * inverse);
}

/// Chunks per sequence: enough blocks for two waves of two per SM, chunks
/// of whole tiles.
int chunkCount(const MlaDecodeArgs &args, int smCount, int &chunkTokens) {
  int tiles = std::max(1, (args.maxLength + kTileTokens - 1) / kTileTokens);
  int blocks = args.batch * (args.heads / kHeadsPerBlock);
  int chunks = std::clamp((4 * smCount + blocks - 1) / blocks, 1, tiles);
  int tilesPerChunk = (tiles + chunks - 1) / chunks;
  chunkTokens = tilesPerChunk * kTileTokens;
  return (tiles + tilesPerChunk - 1) / tilesPerChunk;
}

} // namespace

size_t mlaDecodeWorkspaceBytes(const MlaDecodeArgs &args, int smCount) {
  int chunkTokens = 0;
  size_t slots = size_t(args.batch) * chunkCount(args, smCount, chunkTokens) *
                 args.heads;
  return slots * (kLatentRank * sizeof(float) + sizeof(float2));
}

cudaError_t mlaDecode(const MlaDecodeArgs &args, void *workspace,
                      size_t workspaceBytes, int smCount,
                      cudaStream_t stream) {
  if (args.heads % kHeadsPerBlock != 0 || args.pageSize % kTileTokens != 0 ||
      args.batch <= 0 || args.maxLength <= 0 ||
      args.maxLength > args.pageSize * args.maxPagesPerSequence)
    return cudaErrorInvalidValue;
  if (workspaceBytes < mlaDecodeWorkspaceBytes(args, smCount))
    return cudaErrorInvalidValue;
  int chunkTokens = 0;
  int chunks = chunkCount(args, smCount, chunkTokens);
  size_t slots = size_t(args.batch) * chunks * args.heads;
  auto *sums = static_cast<float *>(workspace);
  auto *stats = reinterpret_cast<float2 *>(sums + slots * kLatentRank);
  size_t shared = sizeof(SharedTile);
  cudaError_t error = cudaFuncSetAttribute(
      mlaDecodeChunks, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(shared));
  if (error != cudaSuccess)
    return error;
  dim3 grid(chunks, args.heads / kHeadsPerBlock, args.batch);
  mlaDecodeChunks<<<grid, kThreads, shared, stream>>>(args, chunkTokens,
                                                      chunks, sums, stats);
  mlaDecodeCombine<<<dim3(args.heads, args.batch), 128, 0, stream>>>(
      args, chunks, sums, stats);
  return cudaGetLastError();
}

} // namespace melt::rt::cuda
