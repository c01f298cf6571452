// Hopper's warpgroup matrix products (wgmma, sm_90a only) for the attention kernel's 64-key tiles. The CTA's
// 4 warps are one warpgroup; wgmma's m64 accumulators give warp w rows 16w..16w+15 in mma.sync's m16n8
// layout, so the softmax code is the same on both paths. The instructions are CuTe's (the nvidia-cutlass
// headers); the descriptors below describe our Tile layout, which is CuTe's 128-byte-swizzle canonical form.
#pragma once

#include <cute/arch/mma_sm90_desc.hpp>
#include <cute/arch/mma_sm90.hpp>

#include <type_traits>
#include <utility>

#include "tile_math.cuh"

#if defined(CUTE_ARCH_MMA_SM90A_ENABLED)
#define MINFER_WGMMA 1
#endif

namespace minfer {
namespace wgmma {

using cute::SM90::GMMA::Major;
using cute::SM90::GMMA::ScaleOut;

// The register-A wgmma of a 64 x N x 16 step for T's operands and float accumulators, as CuTe's selector
// names it (MMA_64xNx16_F32BF16BF16_RS or ..._F32F16F16_RS); B is K-major for Q K^T, MN-major for P V.
template <typename T>
using CuteElement = std::conditional_t<std::is_same_v<T, __half>, cute::half_t, cute::bfloat16_t>;
template <typename T, int N, Major b_major>
using RsOp = decltype(cute::SM90::GMMA::rs_op_selector<CuteElement<T>, CuteElement<T>, float,
                                                       cute::Shape<cute::_64, cute::Int<N>, cute::_16>, Major::K,
                                                       b_major>());

template <typename T>
struct Ops {
  template <int KEYS>
  using QK = RsOp<T, KEYS, Major::K>;
  template <int D>
  using PV = RsOp<T, D, Major::MN>;
};

// A shared-memory matrix descriptor over a Tile (offsets in bytes). The swizzle works on address bits, so
// tiles must be 1 KB aligned. Host code too, for bench/descriptor_advance_check.cu.
__host__ __device__ __forceinline__ uint64_t descriptor(uint32_t addr, uint32_t leading_bytes, uint32_t stride_bytes) {
  cute::GmmaDescriptor d;
  d.bitfield.start_address_ = uint16_t(addr >> 4);
  d.bitfield.leading_byte_offset_ = uint16_t(leading_bytes >> 4);
  d.bitfield.stride_byte_offset_ = uint16_t(stride_bytes >> 4);
  d.bitfield.base_offset_ = 0;
  d.bitfield.layout_type_ = uint8_t(cute::SM90::GMMA::LayoutType::B128);
  return d.desc_;
}

// The k-steps' descriptors are the tile's plus a constant: the start address (bits 0-13, in 16-byte units)
// takes the step's offset without carrying out (shared memory ends below 2^18 bytes), so each wgmma costs one
// uniform add instead of rebuilding its descriptor (6 uniform instructions per wgmma otherwise).
__host__ __device__ __forceinline__ uint64_t advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

// Columns 16kk..16kk+15 of a Tile as a K-major operand (Q as A, K as B of Q K^T): 8-row groups 1 KB apart,
// the k-step 32 bytes into its 128-byte row (the leading offset is unused under the swizzle), its 64-column
// block kColumnBytes on (a Tile's kColumnBlockBytes; more where a block holds more than 64 rows).
template <int kColumnBytes>
__device__ __forceinline__ uint64_t k_major(uint64_t tile_desc, int kk) {
  return advance(tile_desc, (kk >> 2) * kColumnBytes + (kk & 3) * 32);
}
__device__ __forceinline__ uint64_t k_major_tile(uint32_t tile) { return descriptor(tile, 16, 1024); }

// Rows 16kk..16kk+15 of a V Tile as the MN-major B operand of P V: 64-column blocks (along N = D)
// kColumnBytes apart (8 KB in a Tile), 8-row groups (along K = keys) 1 KB apart.
__device__ __forceinline__ uint64_t mn_major(uint64_t tile_desc, int kk) { return advance(tile_desc, kk * 16 * 128); }
template <int kColumnBytes>
__device__ __forceinline__ uint64_t mn_major_tile(uint32_t tile) {
  return descriptor(tile, kColumnBytes, 1024);
}

// Keeps the compiler from moving accumulator reads and writes across the asynchronous products.
template <int N>
__device__ __forceinline__ void fence(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) cute::warpgroup_fence_operand(r[i]);
}

template <typename Op, int N, size_t... I>
__device__ __forceinline__ void rs(const uint32_t (&a)[4], uint64_t b, float (&d)[N], ScaleOut scale,
                                   std::index_sequence<I...>) {
  Op::fma(a[0], a[1], a[2], a[3], b, d[I]..., scale);
}

// Shared memory that cp.async (the generic proxy) wrote is read next by wgmma (the async proxy).
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Starts s = the warp's query rows (mma A fragments in registers, loaded once per CTA) times the KEYS keys of
// the K tile (s as qk_tile's), as one wgmma group; s is read only after wait(). Q from registers halves the
// shared-memory reads of Q K^T, which at m64n64k16 would otherwise take all of the SM's shared bandwidth. A
// 64-row Tile by default; bench/wgmma_rate.cu also runs 128-row tiles (column blocks of KEYS x 128 bytes).
template <typename T, int D, int KEYS = 64, int kColumnBytes = KEYS * 128>
__device__ __forceinline__ void qk_issue(float (&s)[KEYS / 2], const uint32_t (&qa)[D / 16][4], uint32_t k_tile) {
  const uint64_t k_desc = k_major_tile(k_tile);
  cute::warpgroup_arrive();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    rs<typename Ops<T>::template QK<KEYS>>(qa[kk], k_major<kColumnBytes>(k_desc, kk), s,
                                           kk == 0 ? ScaleOut::Zero : ScaleOut::One,
                                           std::make_index_sequence<KEYS / 2>{});
  cute::warpgroup_commit_batch();
}

// Starts o += P V over the KEYS keys of the V tile, P (packed by p_fragment) from registers, V from shared memory
// (o as pv_tile's), as one wgmma group; neither o nor p may be touched again before wait().
template <typename T, int D, int KEYS = 64, int kColumnBytes = KEYS * 128>
__device__ __forceinline__ void pv_issue(float (&o)[D / 2], const uint32_t (&pa)[KEYS / 16][4], uint32_t v_tile) {
  const uint64_t v_desc = mn_major_tile<kColumnBytes>(v_tile);
  fence(o);
  cute::warpgroup_arrive();
#pragma unroll
  for (int kk = 0; kk < KEYS / 16; ++kk)
    rs<typename Ops<T>::template PV<D>>(pa[kk], mn_major(v_desc, kk), o, ScaleOut::One,
                                        std::make_index_sequence<D / 2>{});
  cute::warpgroup_commit_batch();
}

// Waits until at most `pending` of this warpgroup's wgmma groups are still running (groups finish in order),
// then hands `r` back to ordinary code.
template <int pending, int N>
__device__ __forceinline__ void wait(float (&r)[N]) {
  cute::warpgroup_wait<pending>();
  fence(r);
}

}  // namespace wgmma
}  // namespace minfer
