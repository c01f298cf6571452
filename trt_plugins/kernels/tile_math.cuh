// Warp-level tensor-core building blocks shared by the attention and the estimate kernels:
// 64-row tiles in swizzled shared memory filled by cp.async, and mma.sync m16n8k16 (sm_80 and up).
// A CTA has 4 warps; warp w owns rows 16w..16w+15 of a 64-row query tile.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace minfer {

constexpr int kThreads = 128;

template <typename T>
struct MmaType;
template <>
struct MmaType<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ void mma(float* c, const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};
template <>
struct MmaType<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ void mma(float* c, const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; src_bytes 0 writes zeros (rows outside [0, S) must read as 0, not garbage).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// A 64 x D tile of 16-bit values in 64-column blocks of 64 rows x 128 bytes (8 KB each, next to each other);
// within a block, 16-byte chunk c of row r sits at chunk c ^ (r & 7), so the 8 rows an ldmatrix reads fall in
// different banks. (It is also the 128-byte swizzle Hopper's wgmma reads from 1 KB-aligned tiles.)
template <int D>
struct Tile {
  static constexpr int kChunks = D / 8;
  static constexpr int kBytes = 64 * D * 2;
  static constexpr int kColumnBlockBytes = 64 * 128;
  static __device__ __forceinline__ uint32_t offset(int row, int chunk) {
    return (chunk >> 3) * kColumnBlockBytes + row * 128 + (((chunk & 7) ^ (row & 7)) << 4);
  }
};

// How a warpgroup's threads split a tile load (t = threadIdx.x % kThreads, so the sm_90a producer warpgroup,
// the CTA's last, loads the same way): thread t copies 16-byte chunk t % kChunks of rows t / kChunks + k *
// kRowStep. kRowStep is a multiple of 8, so all of a thread's rows have the same swizzle and its shared-memory
// offset advances by kRowStep rows per copy (no per-copy index arithmetic).
template <int D>
struct TileLoad {
  static constexpr int kRowStep = kThreads / Tile<D>::kChunks;  // 8 at D = 128, 16 at D = 64
  static_assert(kRowStep % 8 == 0 && 64 % kRowStep == 0, "rows of one thread must share the swizzle");
  static __device__ __forceinline__ int first_row() { return threadIdx.x % kThreads / Tile<D>::kChunks; }
  static __device__ __forceinline__ int chunk() { return threadIdx.x % Tile<D>::kChunks; }
  static __device__ __forceinline__ uint32_t dst(uint32_t tile, int k) {
    return tile + Tile<D>::offset(first_row(), chunk()) + k * kRowStep * 128;
  }
};

// Loads 64 rows of `base` ([rows, D] row-major) into a tile; row r reads row rows[r] (from shared memory)
// or zeros where rows[r] is outside [0, limit). One commit group is left for the caller to close.
template <typename T, int D>
__device__ __forceinline__ void load_rows(uint32_t tile, const T* base, const int* rows, int64_t limit) {
  using L = TileLoad<D>;
  const T* src = base + L::chunk() * 8;
#pragma unroll
  for (int k = 0; k < 64 / L::kRowStep; ++k) {
    const int64_t row = rows[L::first_row() + k * L::kRowStep];
    const bool valid = row >= 0 && row < limit;
    cp_async16(L::dst(tile, k), src + (valid ? row : 0) * D, valid ? 16 : 0);
  }
}

// Same for the consecutive rows first..first+63.
template <typename T, int D>
__device__ __forceinline__ void load_row_range(uint32_t tile, const T* base, int64_t first, int64_t limit) {
  using L = TileLoad<D>;
  const int64_t row0 = first + L::first_row();
  const T* src = base + row0 * D + L::chunk() * 8;
#pragma unroll
  for (int k = 0; k < 64 / L::kRowStep; ++k) {
    const int64_t row = row0 + k * L::kRowStep;
    const bool valid = row >= 0 && row < limit;
    cp_async16(L::dst(tile, k), valid ? src + k * L::kRowStep * D : base, valid ? 16 : 0);
  }
}

// The warp's 16 query rows, columns 16kk..16kk+15, as an mma A fragment.
template <int D>
__device__ __forceinline__ void load_q_fragment(uint32_t (&qa)[4], uint32_t q_tile, int kk) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, j = lane >> 3, r = lane & 7;
  ldmatrix_x4(qa, q_tile + Tile<D>::offset(16 * warp + (j & 1) * 8 + r, 2 * kk + (j >> 1)));
}

// All of the warp's query columns as mma A fragments, one per 16 columns of D.
template <int D>
__device__ __forceinline__ void load_q_fragments(uint32_t (&qa)[D / 16][4], uint32_t q_tile) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) load_q_fragment<D>(qa[kk], q_tile, kk);
}

// s += the warp's 16 rows, columns 16kk..16kk+15 of D, times the 64 keys of the K tile.
template <typename T, int D>
__device__ __forceinline__ void qk_step(float (&s)[32], const uint32_t (&qa)[4], uint32_t k_tile, int kk) {
  const int lane = threadIdx.x & 31, j = lane >> 3, r = lane & 7;
#pragma unroll
  for (int np = 0; np < 4; ++np) {
    uint32_t b[4];
    ldmatrix_x4(b, k_tile + Tile<D>::offset(np * 16 + (j >> 1) * 8 + r, 2 * kk + (j & 1)));
    MmaType<T>::mma(s + 8 * np, qa, b[0], b[1]);
    MmaType<T>::mma(s + 8 * np + 4, qa, b[2], b[3]);
  }
}

// s = the warp's 16 rows times the 64 keys of the K tile, in the mma accumulator layout: s[4n + e] is row
// g + 8 (e / 2), key 8n + 2t + e % 2, with g = lane / 4, t = lane % 4. Q from registers.
template <typename T, int D>
__device__ __forceinline__ void qk_tile(float (&s)[32], const uint32_t (&qa)[D / 16][4], uint32_t k_tile) {
#pragma unroll
  for (int i = 0; i < 32; ++i) s[i] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) qk_step<T, D>(s, qa[kk], k_tile, kk);
}

// The same with Q read from its shared-memory tile one k-step at a time (for kernels that keep more
// query rows per warp than registers hold).
template <typename T, int D>
__device__ __forceinline__ void qk_tile_smem_q(float (&s)[32], uint32_t q_tile, uint32_t k_tile) {
#pragma unroll
  for (int i = 0; i < 32; ++i) s[i] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t qa[4];
    load_q_fragment<D>(qa, q_tile, kk);
    qk_step<T, D>(s, qa, k_tile, kk);
  }
}

// P (the s layout, already exponentiated) as the A fragments of the 4 key steps of P.V.
template <typename T>
__device__ __forceinline__ void p_fragment(uint32_t (&a)[4], const float (&p)[32], int kk) {
  a[0] = MmaType<T>::pack(p[8 * kk], p[8 * kk + 1]);
  a[1] = MmaType<T>::pack(p[8 * kk + 2], p[8 * kk + 3]);
  a[2] = MmaType<T>::pack(p[8 * kk + 4], p[8 * kk + 5]);
  a[3] = MmaType<T>::pack(p[8 * kk + 6], p[8 * kk + 7]);
}

// All 4 key steps of P as A fragments (what a P V from registers reads), each first packed over the logits it
// replaces (fragment kk in p[8kk..8kk+3], written once p[8kk..8kk+7] are read), so that ptxas gives P the
// logits' registers: beside three consumers' Q and o, P in registers of its own spilled Q and serialised the
// wgmma (C7512). p holds no logits afterwards.
template <typename T>
__device__ __forceinline__ void p_fragments(uint32_t (&a)[4][4], float (&p)[32]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    uint32_t f[4];
    p_fragment<T>(f, p, kk);
#pragma unroll
    for (int i = 0; i < 4; ++i) p[8 * kk + i] = __uint_as_float(f[i]);
  }
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int i = 0; i < 4; ++i) a[kk][i] = __float_as_uint(p[8 * kk + i]);
}

// o += P V for the warp's 16 rows (o in the same layout over D columns), V a 64 x D tile.
template <typename T, int D>
__device__ __forceinline__ void pv_tile(float (&o)[D / 2], const float (&p)[32], uint32_t v_tile) {
  const int lane = threadIdx.x & 31, j = lane >> 3, r = lane & 7;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    uint32_t a[4];
    p_fragment<T>(a, p, kk);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, v_tile + Tile<D>::offset(16 * kk + (j & 1) * 8 + r, 2 * dp + (j >> 1)));
      MmaType<T>::mma(o + 8 * dp, a, b[0], b[1]);
      MmaType<T>::mma(o + 8 * dp + 4, a, b[2], b[3]);
    }
  }
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace minfer
