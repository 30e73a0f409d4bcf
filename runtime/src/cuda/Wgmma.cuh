//===- Wgmma.cuh - Hopper warpgroup MMA on shared-memory tiles -*- CUDA -*-===//
//
// sm_90a's wgmma: four warps (a warpgroup, 128 threads) multiply a 64-row
// A by an N-column B, both read by the tensor cores straight from shared
// memory through 64-bit descriptors, asynchronously: the issuing threads
// go on until they wait for the group. Hopper's full tensor-core rate is
// reached only this way (melt's MLA decode at 128 heads: 153 TFLOP/s on
// mma.sync, 263-339 on wgmma, bench/results/mla_decode_melt.json).
//
// Tiles are kept in the 128-byte swizzle: a row of 64 BF16 values is 128
// bytes, rows follow each other, and the 16-byte chunk c of row r sits at
// chunk c ^ (r % 8) (swizzledOffset). Eight rows make a 1024-byte atom; a
// tile's base is 1024-byte aligned, since the hardware applies the XOR to
// the address bits. One such [rows x 64] block serves two readings:
//  - K-major (A, or B without transpose): rows are M or N, the 64 values
//    along K; 8-row groups 1024 bytes apart (the stride offset); a k16 step
//    moves the start by 32 bytes inside the row.
//  - MN-major (B transposed): rows are K, the 64 values along N; 8-row
//    groups along K 1024 bytes apart (stride offset), 64-column blocks
//    along N `leading` bytes apart.
//
// Accumulator fragments (f32, m64nN): warp w of the group holds rows
// 16 w + g and 16 w + g + 8 (lane = 4 g + t); d[4 j + 0, 1] are row g,
// columns 8 j + 2 t, + 1; d[4 j + 2, 3] the same columns of row g + 8.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_CUDA_WGMMA_CUH
#define MELT_RUNTIME_CUDA_WGMMA_CUH

#include "cuda/AsyncCopy.cuh"

#include <cstdint>

namespace melt::rt::cuda {

/// Bytes of a [rows x 64] BF16 block in the 128-byte swizzle, and the
/// alignment its base needs.
constexpr int kSwizzleRowBytes = 128, kSwizzleAtomBytes = 1024;

/// Byte offset of the 16-byte chunk `chunk` (0..7) of row `row` in a
/// 128-byte-swizzled block.
__host__ __device__ constexpr int swizzledOffset(int row, int chunk) {
  return row * kSwizzleRowBytes + ((chunk ^ (row % 8)) * 16);
}

/// The descriptor of a 128-byte-swizzled operand starting at `tile` (a
/// row's first chunk, or 32 * s bytes into it for the s-th k16 step):
/// `leading` bytes between 64-column blocks (MN-major; unused K-major),
/// `stride` bytes between 8-row groups.
__device__ __forceinline__ uint64_t swizzledDescriptor(const void *tile,
                                                       uint32_t leading,
                                                       uint32_t stride) {
  const uint64_t address = sharedAddress(tile);
  return ((address & 0x3ffff) >> 4) |
         (uint64_t((leading >> 4) & 0x3fff) << 16) |
         (uint64_t((stride >> 4) & 0x3fff) << 32) | (uint64_t(1) << 62);
}

/// A K-major operand's descriptor (rows along M or N, 8-row groups 1024
/// bytes apart).
__device__ __forceinline__ uint64_t kMajorDescriptor(const void *tile) {
  return swizzledDescriptor(tile, 16, kSwizzleAtomBytes);
}

/// An MN-major operand's descriptor (rows along K, 8-row groups 1024 bytes
/// apart; its 64-column blocks along N `blockBytes` apart).
__device__ __forceinline__ uint64_t mnMajorDescriptor(const void *tile,
                                                      uint32_t blockBytes) {
  return swizzledDescriptor(tile, blockBytes, kSwizzleAtomBytes);
}

/// `descriptor` moved `bytes` (a multiple of 16) further into shared
/// memory: one add, where the loops' offsets are constants.
__device__ __forceinline__ uint64_t advanced(uint64_t descriptor,
                                             uint32_t bytes) {
  return descriptor + (bytes >> 4);
}

/// Orders this thread's earlier register writes to the accumulators before
/// the wgmma that follow (needed before the first of a sequence, and after
/// the accumulators were touched).
__device__ __forceinline__ void wgmmaFence() {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

/// Closes the group of the wgmma issued since the last one.
__device__ __forceinline__ void wgmmaCommit() {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

/// Waits until at most `kPending` groups of this warpgroup are in flight.
template <int kPending> __device__ __forceinline__ void wgmmaWait() {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending)
               : "memory");
#endif
}

/// Keeps the compiler from moving reads or writes of `d` (a wgmma's
/// accumulators) across the wgmmaWait just before: the registers are
/// written by the tensor cores until then, which the compiler cannot see.
template <int N>
__device__ __forceinline__ void wgmmaFenceOperands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
    asm volatile("" : "+f"(d[i])::"memory");
}

/// Makes this thread's ordinary writes to shared memory (stores and
/// cp.async copies that have landed) visible to the tensor cores' reads.
__device__ __forceinline__ void fenceSharedForWgmma() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// The accumulators of an m64n32 product (16 a thread) and of an m64n64
// one (32): the register lists and the operands (d[0..] as %0..).
#define MELT_WGMMA_D16_REGISTERS                                               \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}"
#define MELT_WGMMA_D16_OPERANDS(d)                                             \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),      \
      "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]),             \
      "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
#define MELT_WGMMA_D32_REGISTERS                                               \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,"                \
  "%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}"
#define MELT_WGMMA_D32_OPERANDS(d)                                             \
  MELT_WGMMA_D16_OPERANDS(d), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),           \
      "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),         \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),         \
      "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

/// d[64 x 32] (+)= A[64 x 16] B[16 x 32], both K-major in shared memory;
/// `accumulate` false overwrites d.
__device__ __forceinline__ void wgmma64x32(float (&d)[16], uint64_t a,
                                           uint64_t b, bool accumulate) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16."
               "bf16 " MELT_WGMMA_D16_REGISTERS
               ", %16, %17, p, 1, 1, 0, 0;\n}\n"
               : MELT_WGMMA_D16_OPERANDS(d)
               : "l"(a), "l"(b), "r"(int(accumulate)));
#else
  __trap();
#endif
}

/// d[64 x 64] (+)= A[64 x 16] B[16 x 64], both K-major BF16 in shared
/// memory; `accumulate` false overwrites d.
__device__ __forceinline__ void wgmma64x64(float (&d)[32], uint64_t a,
                                           uint64_t b, bool accumulate) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16."
               "bf16 " MELT_WGMMA_D32_REGISTERS
               ", %32, %33, p, 1, 1, 0, 0;\n}\n"
               : MELT_WGMMA_D32_OPERANDS(d)
               : "l"(a), "l"(b), "r"(int(accumulate)));
#else
  __trap();
#endif
}

// The 64 accumulators of an m64n128 product: the register list and the
// operands (d[0..63] as %0..%63; the descriptors and the scale-d flag
// follow as %64, %65, %66).
#define MELT_WGMMA_D64_REGISTERS                                               \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                    \
  "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"           \
  "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"           \
  "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"
#define MELT_WGMMA_D64_OPERANDS(d)                                             \
  MELT_WGMMA_D32_OPERANDS(d), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),           \
      "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),         \
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]),         \
      "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),         \
      "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),         \
      "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),         \
      "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

/// d[64 x 128] (+)= A[64 x 16] B[16 x 128], both K-major BF16 in shared
/// memory; `accumulate` false overwrites d.
__device__ __forceinline__ void wgmma64x128(float (&d)[64], uint64_t a,
                                            uint64_t b, bool accumulate) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16."
               "bf16 " MELT_WGMMA_D64_REGISTERS
               ", %64, %65, p, 1, 1, 0, 0;\n}\n"
               : MELT_WGMMA_D64_OPERANDS(d)
               : "l"(a), "l"(b), "r"(int(accumulate)));
#else
  __trap();
#endif
}

/// d[64 x 128] (+)= A[64 x 32] B[32 x 128], both K-major FP8 e4m3 codes in
/// shared memory (a k32 step is 32 bytes of a 128-byte row, as a BF16 k16
/// step); `accumulate` false overwrites d.
__device__ __forceinline__ void wgmma64x128Fp8(float (&d)[64], uint64_t a,
                                               uint64_t b, bool accumulate) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3."
               "e4m3 " MELT_WGMMA_D64_REGISTERS ", %64, %65, p, 1, 1;\n}\n"
               : MELT_WGMMA_D64_OPERANDS(d)
               : "l"(a), "l"(b), "r"(int(accumulate)));
#else
  __trap();
#endif
}

/// d[64 x N] (+)= A[64 x 32] B[32 x N] for N = 8, 16, 32 or 64 (N / 2
/// accumulators a thread), both K-major FP8 e4m3 codes in shared memory:
/// a narrow B, such as a few tokens against 64 rows of a weight.
template <int N> struct WgmmaFp8;
template <> struct WgmmaFp8<8> {
  static __device__ __forceinline__ void run(float (&d)[4], uint64_t a,
                                             uint64_t b, bool accumulate) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3 "
                 "{%0,%1,%2,%3}, %4, %5, p, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "l"(a), "l"(b), "r"(int(accumulate)));
#else
    __trap();
#endif
  }
};
template <> struct WgmmaFp8<16> {
  static __device__ __forceinline__ void run(float (&d)[8], uint64_t a,
                                             uint64_t b, bool accumulate) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n16k32.f32.e4m3.e4m3 "
                 "{%0,%1,%2,%3,%4,%5,%6,%7}, %8, %9, p, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]),
                   "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                 : "l"(a), "l"(b), "r"(int(accumulate)));
#else
    __trap();
#endif
  }
};
template <> struct WgmmaFp8<32> {
  static __device__ __forceinline__ void run(float (&d)[16], uint64_t a,
                                             uint64_t b, bool accumulate) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k32.f32.e4m3."
                 "e4m3 " MELT_WGMMA_D16_REGISTERS ", %16, %17, p, 1, 1;\n}\n"
                 : MELT_WGMMA_D16_OPERANDS(d)
                 : "l"(a), "l"(b), "r"(int(accumulate)));
#else
    __trap();
#endif
  }
};
template <> struct WgmmaFp8<64> {
  static __device__ __forceinline__ void run(float (&d)[32], uint64_t a,
                                             uint64_t b, bool accumulate) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3."
                 "e4m3 " MELT_WGMMA_D32_REGISTERS ", %32, %33, p, 1, 1;\n}\n"
                 : MELT_WGMMA_D32_OPERANDS(d)
                 : "l"(a), "l"(b), "r"(int(accumulate)));
#else
    __trap();
#endif
  }
};

// The 128 accumulators of an m64n256 product: the register list and the
// operands (d[0..127] as %0..%127, the first 64 as an m64n128 product's;
// the other operands follow from %128).
#define MELT_WGMMA_D128_REGISTERS                                              \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                    \
  "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"           \
  "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"           \
  "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,"           \
  "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,"           \
  "%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,"           \
  "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,"                   \
  "%108,%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,"               \
  "%120,%121,%122,%123,%124,%125,%126,%127}"
#define MELT_WGMMA_D128_OPERANDS(d)                                            \
  MELT_WGMMA_D64_OPERANDS(d), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]),           \
      "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),         \
      "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]),         \
      "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]),         \
      "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]),         \
      "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]),         \
      "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]),         \
      "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]),       \
      "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]),    \
      "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),    \
      "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]),    \
      "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]),    \
      "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]),    \
      "+f"(d[127])

/// d[64 x 256] (+)= A[64 x 16] B[16 x 256], both K-major BF16 in shared
/// memory (B's 256 rows one 128-byte-swizzled tile, or two [128 x 64]
/// tiles one after the other); `accumulate` false overwrites d.
__device__ __forceinline__ void wgmma64x256(float (&d)[128], uint64_t a,
                                            uint64_t b, bool accumulate) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16."
               "bf16 " MELT_WGMMA_D128_REGISTERS
               ", %128, %129, p, 1, 1, 0, 0;\n}\n"
               : MELT_WGMMA_D128_OPERANDS(d)
               : "l"(a), "l"(b), "r"(int(accumulate)));
#else
  __trap();
#endif
}

/// d[64 x 256] += A[64 x 16] B[16 x 256]: A K-major, B MN-major (its rows
/// are K), both in shared memory.
__device__ __forceinline__ void wgmma64x256Transposed(float (&d)[128],
                                                      uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16."
               "bf16 " MELT_WGMMA_D128_REGISTERS
               ", %128, %129, p, 1, 1, 0, 1;\n}\n"
               : MELT_WGMMA_D128_OPERANDS(d)
               : "l"(a), "l"(b), "r"(1));
#else
  __trap();
#endif
}

/// d[64 x 256] += A[64 x 16] B[16 x 256]: A from registers (four BF16
/// pairs a thread, as an m64nK accumulator's fragment of 16 columns packed:
/// row g columns 2 t, + 1; row g + 8 the same; then both 8 columns on), B
/// MN-major in shared memory.
__device__ __forceinline__ void
wgmma64x256RegisterA(float (&d)[128], const uint32_t (&a)[4], uint64_t b) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16."
               "bf16 " MELT_WGMMA_D128_REGISTERS
               ", {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n}\n"
               : MELT_WGMMA_D128_OPERANDS(d)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#else
  __trap();
#endif
}

/// d[64 x 128] += A[64 x 16] B[16 x 128]: A from registers (four BF16
/// pairs a thread, as an m64nK accumulator's fragment of 16 columns packed:
/// row g columns 2 t, + 1; row g + 8 the same; then both 8 columns on), B
/// MN-major in shared memory (its rows are K).
__device__ __forceinline__ void
wgmma64x128RegisterA(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16."
               "bf16 " MELT_WGMMA_D64_REGISTERS
               ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
               : MELT_WGMMA_D64_OPERANDS(d)
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#else
  __trap();
#endif
}

#undef MELT_WGMMA_D16_REGISTERS
#undef MELT_WGMMA_D16_OPERANDS
#undef MELT_WGMMA_D32_REGISTERS
#undef MELT_WGMMA_D32_OPERANDS
#undef MELT_WGMMA_D64_REGISTERS
#undef MELT_WGMMA_D64_OPERANDS
#undef MELT_WGMMA_D128_REGISTERS
#undef MELT_WGMMA_D128_OPERANDS

} // namespace melt::rt::cuda

#endif // MELT_RUNTIME_CUDA_WGMMA_CUH
