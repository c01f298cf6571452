// The sparse attention forward: all heads of the layer in one launch, FlashAttention-2 style (online softmax in
// fp32 over 64-key tiles) over the tiles ItemSchedule yields for a work item of consecutive query blocks per
// CTA, a chunk several blocks hold loaded once. Two bodies:
// - sm_90a: three query blocks per item, a consumer warpgroup per block (Q in registers, Q K^T and P V as
//   Hopper wgmma) and a producer warpgroup that runs the item's tile schedule and the loads (chunk tiles by
//   TMA, gathered columns by cp.async); they hand tiles over through a ring of six shared-memory stages with
//   full/empty mbarriers (FlashAttention-3's warp specialisation), each consumer skipping the other blocks'
//   tiles, so none waits for another;
// - elsewhere (sm_80): two query blocks per item, one warpgroup for both, cp.async, mma.sync, one barrier per
//   tile.
// The launch reads the body's thread count back from the loaded binary (docs/kernels.md).
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "block_rows.cuh"
#include "grid_order.cuh"
#include "kernels.h"
#include "tile_math.cuh"
#include "tile_source.cuh"
#include "wgmma.cuh"

#include <cute/arch/copy_sm90_tma.hpp>

#if MINFER_WGMMA
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#endif

namespace minfer {
namespace {

// Query blocks per work item: one per consumer warpgroup on sm_90a, two in the sm_80 body's one warpgroup. The
// host tells the two bodies apart by their thread counts (AttentionBody).
constexpr int kPipeBlocks = 3, kPairBlocks = 2;

// sm_80 body: each warp keeps 16 rows of both query blocks, so Q stays in shared memory and is read per k-step.
template <int D>
struct PairSmem {
  static constexpr int kK = 0;                            // two stages
  static constexpr int kV = kK + 2 * Tile<D>::kBytes;     // two stages
  static constexpr int kQ = kV + 2 * Tile<D>::kBytes;     // the pair's two query blocks
  static constexpr int kKeys = kQ + 2 * Tile<D>::kBytes;  // int[2][64]
  static constexpr int kSource = kKeys + 2 * kBlock * 4;  // ItemSource<kPairBlocks>
  static constexpr int kBytes = kSource + int(sizeof(ItemSource<kPairBlocks>));
};

// sm_90a body: a tile stays in its stage (K, V, gathered keys, TileDesc) until the P V of each block that
// computes it is done, and the producer fills the next stages meanwhile, so any block can run up to five
// tiles ahead of another.
constexpr int kStages = 6;
// Chunk starts the sm_90a producer reads ahead per block (ItemSchedule), and so minfer_debug_tiles, which
// must walk the same code.
constexpr int kLagsAhead = 4;
template <int D>
struct PipeSmem {
  static constexpr int kK = 0;                                  // [kStages] tiles
  static constexpr int kV = kK + kStages * Tile<D>::kBytes;     // [kStages] tiles
  static constexpr int kKeys = kV + kStages * Tile<D>::kBytes;  // int[kStages][64]
  static constexpr int kTiles = kKeys + kStages * kBlock * 4;   // TileDesc[kStages]
  static constexpr int kFull = kTiles + kStages * 8;            // mbarrier[kStages]: the producer filled it
  static constexpr int kEmpty = kFull + kStages * 8;            // mbarrier[kStages]: every consumer is done with it
  static constexpr int kHandoff = kEmpty + kStages * 8;         // int[2]: the stage and phase after the chunks
  static constexpr int kSource = kHandoff + 8;                  // ItemSource<kPipeBlocks>
  static constexpr int kBytes = kSource + int(sizeof(ItemSource<kPipeBlocks>));
};

// Threads of the attention CTA: three consumer warpgroups and a producer on sm_90a (1 CTA per SM), one
// warpgroup elsewhere (2 CTAs per SM). The host reads the count back from the loaded binary
// (cudaFuncAttributes::maxThreadsPerBlock), so launch and body agree.
constexpr int kPipeThreads = (kPipeBlocks + 1) * kThreads;
#if MINFER_WGMMA
constexpr int kItemBlocks = kPipeBlocks, kAttentionThreads = kPipeThreads, kAttentionCtasPerSm = 1;
#else
constexpr int kItemBlocks = kPairBlocks, kAttentionThreads = kThreads, kAttentionCtasPerSm = 2;
#endif

// Registers per thread after setmaxnreg: a consumer holds Q (D / 4), o (D / 2), a tile's logits (32) and its P
// (16); the producer its schedule and addresses. setmaxnreg moves registers between the warpgroups of the CTA,
// so the launch must allocate their sum: 128 per thread of 512 (the host checks the binary's count, since a
// consumer asking for more than the CTA holds would wait forever). Three consumers at 160 reach 1.31x the
// tensor rate of two at 224 (bench/wgmma_rate.cu).
constexpr int kConsumerRegisters = 160, kProducerRegisters = 32;
constexpr int kLaunchRegisters = (kPipeBlocks * kConsumerRegisters + kProducerRegisters) / (kPipeBlocks + 1);
static_assert(kLaunchRegisters * kPipeThreads <= 65536, "1 CTA per SM");

// TMA descriptors of K and V as [batch * KV heads, S, D] (rows outside [0, S) of a head read as zeros), boxes of
// 64 rows by 64 columns with the 128-byte swizzle: one box is one column block of a Tile. The sm_90a producer
// loads a chunk tile with D / 32 of them from one thread; the sm_80 body does not read them.
struct KvMaps {
  CUtensorMap k, v;
};

// K and V of one tile into a stage's buffers (the caller commits or signals them).
template <typename T, int D>
__device__ __forceinline__ void load_kv(uint32_t k_tile, uint32_t v_tile, const T* k_head, const T* v_head,
                                        const TileDesc& tile, const int* keys, int64_t seq) {
  if (tile.start == kGathered) {
    load_rows<T, D>(k_tile, k_head, keys, seq);
    load_rows<T, D>(v_tile, v_head, keys, seq);
  } else {
    load_row_range<T, D>(k_tile, k_head, tile.start, seq);
    load_row_range<T, D>(v_tile, v_head, tile.start, seq);
  }
}

#if MINFER_WGMMA
// The warp's query rows as wgmma A fragments, straight from global memory (rows past S read as 0): the
// m16n8k16 A layout, a[i] = rows g + 8 (i & 1), columns 16kk + 2t + 8 (i >> 1) and the next one.
template <typename T, int D>
__device__ __forceinline__ void load_q_registers(uint32_t (&qa)[D / 16][4], const T* q_head, int start, int seq) {
  const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = start + 16 * warp + g + 8 * (i & 1), col = 16 * kk + 2 * t + 8 * (i >> 1);
      qa[kk][i] = row < seq ? __ldg(reinterpret_cast<const uint32_t*>(q_head + int64_t(row) * D + col)) : 0u;
    }
}

// The producer warpgroup: the item's tiles in order, each into the next free stage, then a tile without uses
// to say there are no more. Each stage's full barrier counts two arrivals per producer thread and, for a TMA
// tile, its bytes (expect-tx by thread 0). The chunk tiles (64 consecutive rows by TMA boxes) are warp 0's
// alone: its lane 0 issues the boxes and arrives for all producer threads at once, while warps 1-3 wait at the
// group's barrier rather than run the same schedule beside it, each on an SM sub-partition's issue slots that
// its three consumer warps share. Then the whole group takes the column tiles (cp.async by every thread, each
// arriving once when its copies land and once after its stores of the keys and the TileDesc) and the last.
template <typename T, int D, int kKind>
__device__ __forceinline__ void produce(ItemSource<kPipeBlocks>& source, char* smem, const KvMaps& maps,
                                        int map_head, const T* k_head, const T* v_head, int seq) {
  using S = PipeSmem<D>;
  using Barrier = cutlass::arch::ClusterBarrier;
  constexpr int kTile = Tile<D>::kBytes;
  const uint32_t k_tiles = smem_addr(smem + S::kK), v_tiles = smem_addr(smem + S::kV);
  int* keys = reinterpret_cast<int*>(smem + S::kKeys);
  TileDesc* tiles = reinterpret_cast<TileDesc*>(smem + S::kTiles);
  auto* full = reinterpret_cast<uint64_t*>(smem + S::kFull);
  auto* empty = reinterpret_cast<uint64_t*>(smem + S::kEmpty);
  int* handoff = reinterpret_cast<int*>(smem + S::kHandoff);
  const ProducerGroup group;
  ItemSchedule<kPipeBlocks, kLagsAhead, kKind> schedule(source);
  int stage = 0, phase = 0;
  // warp-uniform as ptxas can see (a shuffle of lane 0's), so the schedule stays on the uniform datapath
  if (__shfl_sync(0xffffffffu, group.tid() / 32, 0) == 0) {
    while (schedule.chunks_left()) {
      Barrier::wait(empty + stage, phase ^ 1);  // the first round passes at once
      const TileDesc tile = schedule.next_chunk(seq);
      if (group.tid() == 0) {
        tiles[stage] = tile;
        cutlass::arch::ClusterTransactionBarrier::expect_transaction(full + stage, 2 * kTile);
        constexpr uint64_t kHint = uint64_t(cute::TMA::CacheHintSm90::EVICT_NORMAL);
#pragma unroll
        for (int c = 0; c < D / 64; ++c) {
          const int offset = stage * kTile + c * Tile<D>::kColumnBlockBytes;
          cute::SM90_TMA_LOAD_3D::copy(&maps.k, full + stage, kHint, smem + S::kK + offset, 64 * c, tile.start,
                                       map_head);
          cute::SM90_TMA_LOAD_3D::copy(&maps.v, full + stage, kHint, smem + S::kV + offset, 64 * c, tile.start,
                                       map_head);
        }
        // release: the TileDesc store before the arrivals of all producer threads
        asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(full + stage)),
                     "r"(2 * kThreads)
                     : "memory");
      }
      if (++stage == kStages) stage = 0, phase ^= 1;
    }
    if (group.tid() == 0) handoff[0] = stage, handoff[1] = phase;
  }
  group.sync();  // warp 0's stores of the hand-off before the other warps read it
  stage = handoff[0], phase = handoff[1];
  for (;;) {
    Barrier::wait(empty + stage, phase ^ 1);
    int* stage_keys = keys + stage * kBlock;
    const TileDesc tile = schedule.next_column(source, stage_keys, group);
    if (group.tid() == 0) tiles[stage] = tile;
    if (tile.uses) {  // gathered rows (vertical-slash only): cp.async by every producer thread
      load_rows<T, D>(k_tiles + stage * kTile, k_head, stage_keys, seq);
      load_rows<T, D>(v_tiles + stage * kTile, v_head, stage_keys, seq);
    }
    cutlass::arch::cpasync_barrier_arrive_noinc(full + stage);
    Barrier::arrive(full + stage);
    if (!tile.uses) return;
    if (++stage == kStages) stage = 0, phase ^= 1;
  }
}

// The consumer warpgroup of block `block` of the item (query block m): its tiles one at a time (Q K^T,
// softmax, rescale, P V), every stage given back once its P V is done or at once if another block's. One
// 64-key tile at a time: two tiles' logits (64 more registers) do not fit beside three consumers
// (bench/stage_protocol_model.py models the protocol).
template <typename T, int D>
__device__ __forceinline__ void consume(const LaunchParams& p, char* smem, int h, int m, int block, const T* q_head,
                                        T* out_head) {
  using S = PipeSmem<D>;
  using Barrier = cutlass::arch::ClusterBarrier;
  constexpr int kTile = Tile<D>::kBytes;
  const HeadParams& hp = p.heads[h];
  const int seq = int(p.seq_len);  // S <= 2^30
  const int start = m * kBlock, mine = kUsesFirst << block;
  const uint32_t k_tiles = smem_addr(smem + S::kK), v_tiles = smem_addr(smem + S::kV);
  const int* keys = reinterpret_cast<const int*>(smem + S::kKeys);
  const TileDesc* tiles = reinterpret_cast<const TileDesc*>(smem + S::kTiles);
  auto* full = reinterpret_cast<uint64_t*>(smem + S::kFull);
  auto* empty = reinterpret_cast<uint64_t*>(smem + S::kEmpty);

  uint32_t qa[D / 16][4];
  load_q_registers<T, D>(qa, q_head, start, seq);
  BlockRows<D> rows;
  rows.init(start);
  for (int stage = 0, phase = 0;;) {
    Barrier::wait(full + stage, phase);
    const TileDesc tile = tiles[stage];
    if (!tile.uses) break;
    if (tile.uses & mine) {
      const int* tile_keys = keys + stage * kBlock;
      float s[1][32], alpha[2];
      uint32_t pa[4][4];  // P as P V's A operand
      wgmma::fence_async_shared();
      wgmma::qk_issue<T, D>(s[0], qa, k_tiles + stage * kTile);
      wgmma::wait<0>(s[0]);
      rows.template softmax_tiles<1>(s, alpha, &tile, &tile_keys, block, hp, seq, p.scale_log2);
      rows.rescale(alpha);
      p_fragments<T>(pa, s[0]);
      wgmma::pv_issue<T, D>(rows.o, pa, v_tiles + stage * kTile);
      wgmma::wait<0>(rows.o);
    }
    Barrier::arrive(empty + stage);
    if (++stage == kStages) stage = 0, phase ^= 1;
  }
  rows.store(out_head, seq);
}

// The item's `count` query blocks from m0: warpgroups 0 .. kPipeBlocks - 1 consume, one block each, the last
// produces.
template <typename T, int D>
__device__ __forceinline__ void attend_item(const LaunchParams& p, const KvMaps& maps, char* smem, const char* ws,
                                            int b, int h, int m0, int count, const T* q_head, const T* k_head,
                                            const T* v_head, T* out_head) {
  using S = PipeSmem<D>;
  auto& source = *reinterpret_cast<ItemSource<kPipeBlocks>*>(smem + S::kSource);
  if (threadIdx.x == 0) {
    source.init(p, ws, b, h, m0, count);
    for (int i = 0; i < kStages; ++i) {
      cutlass::arch::ClusterBarrier::init(reinterpret_cast<uint64_t*>(smem + S::kFull) + i, 2 * kThreads);
      cutlass::arch::ClusterBarrier::init(reinterpret_cast<uint64_t*>(smem + S::kEmpty) + i, kPipeBlocks * kThreads);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  // broadcast from lane 0, so ptxas sees the branch is the same in the whole warp (C7520 otherwise)
  const int warpgroup = __shfl_sync(0xffffffffu, int(threadIdx.x) / kThreads, 0);
  if (warpgroup == kPipeBlocks) {
    cutlass::arch::warpgroup_reg_dealloc<kProducerRegisters>();
    const int map_head = b * p.num_kv_heads + h / p.group, seq = int(p.seq_len);
    switch (p.heads[h].kind) {  // one tile loop per kind (ChunkWalk's kKind)
      case MINFER_DENSE: produce<T, D, MINFER_DENSE>(source, smem, maps, map_head, k_head, v_head, seq); break;
      case MINFER_A_SHAPE: produce<T, D, MINFER_A_SHAPE>(source, smem, maps, map_head, k_head, v_head, seq); break;
      case MINFER_BLOCK_SPARSE:
        produce<T, D, MINFER_BLOCK_SPARSE>(source, smem, maps, map_head, k_head, v_head, seq);
        break;
      default: produce<T, D, MINFER_VERTICAL_SLASH>(source, smem, maps, map_head, k_head, v_head, seq);
    }
  } else {
    // a missing block still gives every stage back; its rows (from S on) are neither read nor written
    cutlass::arch::warpgroup_reg_alloc<kConsumerRegisters>();
    consume<T, D>(p, smem, h, m0 + warpgroup, warpgroup, q_head, out_head);
  }
}
#else
// The item's `count` query blocks from m0 (one or two), each tile computed for the blocks that hold it (by
// cp.async, so the TMA descriptors go unread).
template <typename T, int D>
__device__ __forceinline__ void attend_item(const LaunchParams& p, const KvMaps&, char* smem, const char* ws, int b,
                                            int h, int m0, int count, const T* q_head, const T* k_head,
                                            const T* v_head, T* out_head) {
  using S = PairSmem<D>;
  const HeadParams& hp = p.heads[h];
  const int seq = int(p.seq_len);  // S <= 2^30
  const int start0 = m0 * kBlock;
  const uint32_t k_tiles = smem_addr(smem + S::kK), v_tiles = smem_addr(smem + S::kV);
  const uint32_t q_tiles = smem_addr(smem + S::kQ);
  int* keys = reinterpret_cast<int*>(smem + S::kKeys);
  auto& source = *reinterpret_cast<ItemSource<kPairBlocks>*>(smem + S::kSource);

  load_row_range<T, D>(q_tiles, q_head, start0, seq);
  if (count > 1) load_row_range<T, D>(q_tiles + Tile<D>::kBytes, q_head, start0 + kBlock, seq);
  cp_async_commit();
  if (threadIdx.x == 0) source.init(p, ws, b, h, m0, count);
  __syncthreads();
  ItemSchedule<kPairBlocks> schedule(source);
  TileDesc tile = schedule.next(source, seq, keys);  // the first block has at least its diagonal chunk
  load_kv<T, D>(k_tiles, v_tiles, k_head, v_head, tile, keys, seq);
  cp_async_commit();

  BlockRows<D> block[2];
  block[0].init(start0);
  block[1].init(start0 + kBlock);
  for (int stage = 0;; stage ^= 1) {
    // this tile's K/V (and Q) have landed, and every thread is done with the other stage's buffers
    cp_async_wait<0>();
    __syncthreads();
    const TileDesc next = schedule.next(source, seq, keys + (stage ^ 1) * kBlock);
    if (next.uses)
      load_kv<T, D>(k_tiles + (stage ^ 1) * Tile<D>::kBytes, v_tiles + (stage ^ 1) * Tile<D>::kBytes, k_head,
                    v_head, next, keys + (stage ^ 1) * kBlock, seq);
    cp_async_commit();
    const uint32_t k_tile = k_tiles + stage * Tile<D>::kBytes, v_tile = v_tiles + stage * Tile<D>::kBytes;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      if (!(tile.uses & (kUsesFirst << half))) continue;  // the same in every thread
      float s[1][32], alpha[2];
      const int* tile_keys = keys + stage * kBlock;
      qk_tile_smem_q<T, D>(s[0], q_tiles + half * Tile<D>::kBytes, k_tile);
      block[half].template softmax_tiles<1>(s, alpha, &tile, &tile_keys, half, hp, seq, p.scale_log2);
      block[half].rescale(alpha);
      pv_tile<T, D>(block[half].o, s[0], v_tile);
    }
    if (!next.uses) break;
    tile = next;
  }
  block[0].store(out_head, seq);
  if (count > 1) block[1].store(out_head, seq);
}
#endif

template <typename T, int D>
__global__ void __launch_bounds__(kAttentionThreads, kAttentionCtasPerSm)
    attention_kernel(const __grid_constant__ LaunchParams p, const __grid_constant__ KvMaps maps, const T* q,
                     const T* k, const T* v, T* out, const char* ws) {
  extern __shared__ __align__(1024) char smem[];  // wgmma's swizzle needs 1 KB aligned tiles
  int b, h, m0;
  decode_work_item(p, blockIdx.x, kItemBlocks, b, h, m0);
  const int64_t seq = p.seq_len, kvh = h / p.group;
  const T* q_head = q + (int64_t(b) * p.num_q_heads + h) * seq * D;
  const T* k_head = k + (int64_t(b) * p.num_kv_heads + kvh) * seq * D;
  const T* v_head = v + (int64_t(b) * p.num_kv_heads + kvh) * seq * D;
  T* out_head = out + (int64_t(b) * p.num_q_heads + h) * seq * D;
  attend_item<T, D>(p, maps, smem, ws, b, h, m0, item_block_count(p, m0, kItemBlocks), q_head, k_head, v_head,
                    out_head);
}

// minfer_debug_tiles: the schedule of the block's work item, as the attention kernel built for the same
// architecture runs it, writing the keys of the tiles that block computes instead of computing them.
__global__ void __launch_bounds__(kThreads) debug_tiles_kernel(const __grid_constant__ LaunchParams p,
                                                               const char* ws, const int32_t* items,
                                                               int32_t max_tiles, int32_t* tile_keys,
                                                               int32_t* tile_counts) {
  __shared__ int keys[kBlock];
  __shared__ ItemSource<kItemBlocks> source;
  const int64_t item = blockIdx.x;
  const int b = items[3 * item], h = items[3 * item + 1], m = items[3 * item + 2];
  const int m0 = m - m % kItemBlocks, mine = kUsesFirst << (m - m0);
  if (threadIdx.x == 0) source.init(p, ws, b, h, m0, item_block_count(p, m0, kItemBlocks));
  __syncthreads();
  ItemSchedule<kItemBlocks, kLagsAhead> schedule(source);
  int count = 0;
  for (TileDesc tile; (tile = schedule.next(source, p.seq_len, keys)).uses != 0;) {
    if (!(tile.uses & mine)) continue;
    if (count < max_tiles && threadIdx.x < kBlock)
      tile_keys[(item * max_tiles + count) * kBlock + threadIdx.x] =
          tile.start == kGathered ? keys[threadIdx.x] : int(tile.start + threadIdx.x);
    ++count;
  }
  if (threadIdx.x == 0) tile_counts[item] = count;
}

// The loaded binary's body, told by its thread count: 4 warpgroups (sm_90a) or 1.
struct AttentionBody {
  int threads, smem, item_blocks;
};

template <typename T, int D>
cudaError_t attention_body(AttentionBody& body) {
  cudaFuncAttributes attributes;
  const cudaError_t err = cudaFuncGetAttributes(&attributes, attention_kernel<T, D>);
  if (err != cudaSuccess) return err;
  const bool pipelined = attributes.maxThreadsPerBlock >= kPipeThreads;
  // setmaxnreg redistributes the launch's registers: fewer than it assumes would hang the consumers
  if (pipelined && attributes.numRegs < kLaunchRegisters) return cudaErrorInvalidKernelImage;
  body = pipelined ? AttentionBody{kPipeThreads, PipeSmem<D>::kBytes, kPipeBlocks}
                   : AttentionBody{kThreads, PairSmem<D>::kBytes, kPairBlocks};
  return cudaSuccess;
}

// One of K or V as the TMA descriptor KvMaps describes; the driver's encoder is looked up once.
template <typename T, int D>
cudaError_t kv_map(CUtensorMap& map, const void* base, const LaunchParams& p) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    const cudaError_t err =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found);
    return err == cudaSuccess && found == cudaDriverEntryPointSuccess
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn)
               : nullptr;
  }();
  if (encode == nullptr) return cudaErrorInsufficientDriver;  // a driver older than CUDA 12.0 has no encoder
  const cuuint64_t dims[3] = {cuuint64_t(D), cuuint64_t(p.seq_len), cuuint64_t(p.batch) * p.num_kv_heads};
  const cuuint64_t strides[2] = {cuuint64_t(D) * sizeof(T), cuuint64_t(p.seq_len) * D * sizeof(T)};
  const cuuint32_t box[3] = {64, kBlock, 1}, unit[3] = {1, 1, 1};
  const CUresult result = encode(&map, std::is_same_v<T, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                                  : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                                 3, const_cast<void*>(base), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                 CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return result == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

template <typename T, int D>
cudaError_t launch_attention_typed(const LaunchParams& p, const void* q, const void* k, const void* v, void* out,
                                   const char* ws, cudaStream_t stream) {
  AttentionBody body;
  cudaError_t err = attention_body<T, D>(body);
  if (err != cudaSuccess) return err;
  KvMaps maps{};
  if (body.threads == kPipeThreads &&
      ((err = kv_map<T, D>(maps.k, k, p)) != cudaSuccess || (err = kv_map<T, D>(maps.v, v, p)) != cudaSuccess))
    return err;
  err = cudaFuncSetAttribute(attention_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, body.smem);
  if (err != cudaSuccess) return err;
  const int64_t items = int64_t(work_items_per_head(p, body.item_blocks)) * p.batch * p.num_q_heads;
  attention_kernel<T, D><<<dim3(unsigned(items)), body.threads, body.smem, stream>>>(
      p, maps, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(out), ws);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_attention(const LaunchParams& p, minfer_dtype dtype, int head_dim, const void* q, const void* k,
                             const void* v, void* out, const char* ws, cudaStream_t stream) {
  if (dtype == MINFER_BFLOAT16)
    return head_dim == 64 ? launch_attention_typed<__nv_bfloat16, 64>(p, q, k, v, out, ws, stream)
                          : launch_attention_typed<__nv_bfloat16, 128>(p, q, k, v, out, ws, stream);
  return head_dim == 64 ? launch_attention_typed<__half, 64>(p, q, k, v, out, ws, stream)
                        : launch_attention_typed<__half, 128>(p, q, k, v, out, ws, stream);
}

cudaError_t launch_debug_tiles(const LaunchParams& p, const char* ws, const int32_t* items, int64_t num_items,
                               int32_t max_tiles, int32_t* tile_keys, int32_t* tile_counts, cudaStream_t stream) {
  if (num_items == 0) return cudaSuccess;
  debug_tiles_kernel<<<dim3(unsigned(num_items)), kThreads, 0, stream>>>(p, ws, items, max_tiles, tile_keys,
                                                                         tile_counts);
  return cudaGetLastError();
}

cudaError_t attention_kernel_versions(int* ptx_version, int* binary_version) {
  cudaFuncAttributes attributes;
  const cudaError_t err = cudaFuncGetAttributes(&attributes, attention_kernel<__nv_bfloat16, 128>);
  if (err != cudaSuccess) return err;
  *ptx_version = attributes.ptxVersion;
  *binary_version = attributes.binaryVersion;
  return cudaSuccess;
}

}  // namespace minfer
