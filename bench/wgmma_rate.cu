// The tensor-core rate of the sm_90a consumer's per-tile schedule with nothing else on the SM: no loads, no
// producer, no stages. Each consumer warpgroup repeats Q K^T (RS wgmma, K-major K tile in shared memory),
// wait, [row maxima and exponentials of its logits], packing of P, P V (RS wgmma, MN-major V tile), wait,
// over one tile of KEYS keys at head_dim 128, bf16. It answers: does a 128-key tile (Q K^T as m64n128k16)
// raise the rate over a 64-key tile (m64n64k16), with one, two or three consumers per SM, with and without the
// softmax, and do two consumers gain by taking turns on the tensor cores? (docs/kernels.md has the table.)
// The rate is reported per SM cycle (the CTAs' own clock64), so the power cap's clock does not blur the
// comparison, and as TFLOP/s at the clock the run had.
// Build and run (sm_90a only): cmake --build build --target wgmma_rate && build/wgmma_rate
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "block_rows.cuh"
#include "wgmma.cuh"

#if MINFER_WGMMA
#include <cutlass/arch/reg_reconfig.h>
#endif

namespace {

using namespace minfer;
using T = __nv_bfloat16;
constexpr int kD = 128;

// Bytes of a K (or V) tile of KEYS rows: two 64-column blocks of KEYS rows x 128 bytes, as wgmma::qk_issue and
// pv_issue read KEYS-row tiles.
template <int KEYS>
constexpr int kTileBytes = 2 * KEYS * 128;

// How the two consumers of an SM take turns on the tensor cores: not at all (v14), FlashAttention-3's ping-pong
// on Q K^T alone (the other consumer issues its Q K^T once this one's has finished: next/v14-pingpong), or on
// bursts of one tile's P V and the next tile's Q K^T (FA3's order, which needs Q K^T issued before P V's wait).
enum class Turns { kFree, kQk, kBurst };
constexpr const char* kTurnsName[] = {"free", "ping-pong on Q K^T", "ping-pong on P V + next Q K^T"};

// Named barriers 2 and 3 as the kernel's PipeTurns: warpgroup w waits on 2 + w, passes to 3 - w.
__device__ __forceinline__ void turn_wait(int w) {
  asm volatile("bar.sync %0, 256;\n" ::"r"(2 + w) : "memory");
}
__device__ __forceinline__ void turn_pass(int w) {
  asm volatile("bar.arrive %0, 256;\n" ::"r"(3 - w) : "memory");
}

// Q K^T with Q from shared memory too (an SS wgmma: A is this warpgroup's Q tile, K-major like K), the form a
// consumer without Q in registers would run; 32 registers freer, twice Q K^T's shared-memory reads.
template <typename Op, size_t... I>
__device__ __forceinline__ void ss(uint64_t a, uint64_t b, float (&d)[sizeof...(I)], wgmma::ScaleOut scale,
                                   std::index_sequence<I...>) {
  Op::fma(a, b, d[I]..., scale);
}
template <int KEYS>
__device__ __forceinline__ void qk_issue_ss(float (&s)[KEYS / 2], uint32_t q_tile, uint32_t k_tile) {
  using Op = decltype(cute::SM90::GMMA::ss_op_selector<wgmma::CuteElement<T>, wgmma::CuteElement<T>, float,
                                                       cute::Shape<cute::_64, cute::Int<KEYS>, cute::_16>>());
  const uint64_t q_desc = wgmma::k_major_tile(q_tile), k_desc = wgmma::k_major_tile(k_tile);
  cute::warpgroup_arrive();
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk)
    ss<Op>(wgmma::k_major<Tile<kD>::kColumnBlockBytes>(q_desc, kk), wgmma::k_major<KEYS * 128>(k_desc, kk), s,
           kk == 0 ? wgmma::ScaleOut::Zero : wgmma::ScaleOut::One, std::make_index_sequence<KEYS / 2>{});
  cute::warpgroup_commit_batch();
}

// What runs between Q K^T and P V: nothing, a bare softmax (one running maximum per thread, no mask, no rescale
// of o), or the kernel's own (BlockRows: two rows per thread, quad reductions, the scale, the rescale of o,
// which a steady maximum skips as in the kernel), on tiles without or with the token mask.
enum class Softmax { kNone, kBare, kKernel, kKernelMasked };
constexpr const char* kSoftmaxName[] = {"no", "bare", "the kernel's", "the kernel's, masked"};

// WARPGROUPS consumers per CTA (one CTA per SM); their registers are capped at 65536 / (128 WARPGROUPS). With
// kIdleProducer a last warpgroup gives its registers back (setmaxnreg to 24) and leaves, and the three
// consumers take 160 each, as a CTA of three consumers and a producer would split them.
constexpr int kIdleProducerRegisters = 24, kConsumerBesideProducerRegisters = 160;
// kQInSmem: each consumer's Q tile (64 x 128, after K and V) is read by an SS Q K^T instead of registers.
template <int KEYS, Softmax kSoftmax, Turns kTurns, int WARPGROUPS, bool kIdleProducer, bool kQInSmem>
__global__ void __launch_bounds__(128 * (WARPGROUPS + kIdleProducer), 1)
    consumer_rate(int iterations, long long* cycles, float* sink) {
#if MINFER_WGMMA
  extern __shared__ __align__(1024) uint8_t smem[];
  constexpr int kLogits = KEYS / 2;  // accumulator floats per thread of an m64 x KEYS product
  const uint32_t k_tile = smem_addr(smem), v_tile = k_tile + kTileBytes<KEYS>;
  // bf16 values in [-1, 1): the power the tensor cores draw depends on the data, and the cap sets the clock
  constexpr int kFilled = 2 * kTileBytes<KEYS> + (kQInSmem ? WARPGROUPS * kTileBytes<64> : 0);
  for (int i = threadIdx.x; i < kFilled / int(sizeof(T)); i += blockDim.x)
    reinterpret_cast<T*>(smem)[i] = __float2bfloat16(float((i * 2654435761u) >> 16) / 32768.0f - 1.0f);
  wgmma::fence_async_shared();
  __syncthreads();
  if constexpr (kIdleProducer) {
    static_assert(WARPGROUPS * kConsumerBesideProducerRegisters + kIdleProducerRegisters <= 512, "65536 registers");
    if (__shfl_sync(0xffffffffu, int(threadIdx.x) / 128, 0) == WARPGROUPS) {
      cutlass::arch::warpgroup_reg_dealloc<kIdleProducerRegisters>();
      return;
    }
    cutlass::arch::warpgroup_reg_alloc<kConsumerBesideProducerRegisters>();
  }

  const uint32_t q_tile = v_tile + kTileBytes<KEYS> + (threadIdx.x / 128) * kTileBytes<64>;  // kQInSmem only
  uint32_t qa[kQInSmem ? 1 : kD / 16][4];
  for (int kk = 0; kk < (kQInSmem ? 0 : kD / 16); ++kk)
    for (int r = 0; r < 4; ++r) qa[kk][r] = MmaType<T>::pack(0.01f * (threadIdx.x + kk), 0.02f * r);
  float s[kLogits];
  uint32_t pa[KEYS / 16][4];
  float row_max = -INFINITY, row_sum = 0.f;
  // the output accumulators, and for the kernel's softmax its row statistics: rows far from the keys, so the
  // causal test passes and the mask costs what it does
  BlockRows<kD> rows;
  rows.init(1 << 20);
  HeadParams hp{};
  hp.kind = MINFER_VERTICAL_SLASH;
  constexpr int kTiles = KEYS / 64;
  const int mask = kSoftmax == Softmax::kKernelMasked ? kMaskFirst : 0;
  const TileDesc tiles[2] = {{kUsesFirst | mask, 0}, {kUsesFirst | mask, 64}};
  const int* no_keys[2] = {nullptr, nullptr};
  float alpha[2];
  float(&tile_logits)[kTiles][32] = reinterpret_cast<float(&)[kTiles][32]>(s);
  uint32_t(&tile_pa)[kTiles][4][4] = reinterpret_cast<uint32_t(&)[kTiles][4][4]>(pa);

  // turns: warpgroup 0 waits before each of its turns but the first and once after its last, warpgroup 1
  // before each, so every pass meets one wait
  const int w = threadIdx.x / 128;
  const long long start = clock64();
  if constexpr (kTurns == Turns::kBurst) {  // the first tile's Q K^T is a turn of its own
    if (w == 1) turn_wait(w);
    wgmma::qk_issue<T, kD, KEYS>(s, qa, k_tile);
    wgmma::wait<0>(s);
    turn_pass(w);
  }
  for (int it = 0; it < iterations; ++it) {
    if constexpr (kTurns == Turns::kQk) {
      if (w == 1 || it > 0) turn_wait(w);
    }
    if constexpr (kQInSmem) {
      qk_issue_ss<KEYS>(s, q_tile, k_tile);
      wgmma::wait<0>(s);
    } else if constexpr (kTurns != Turns::kBurst) {
      wgmma::qk_issue<T, kD, KEYS>(s, qa, k_tile);
      wgmma::wait<0>(s);
    }
    if constexpr (kTurns == Turns::kQk) turn_pass(w);
    if constexpr (kSoftmax == Softmax::kKernel || kSoftmax == Softmax::kKernelMasked) {
      rows.template softmax_tiles<kTiles>(tile_logits, alpha, tiles, no_keys, 0, hp, 1 << 21, 0.1275174f);
      rows.rescale(alpha);
    } else if constexpr (kSoftmax == Softmax::kBare) {
      float m = row_max;
#pragma unroll
      for (int i = 0; i < kLogits; ++i) m = fmaxf(m, s[i]);
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
      const float rescale = fast_exp2(row_max - m);
      row_max = m;
#pragma unroll
      for (int i = 0; i < kLogits; ++i) {
        s[i] = fast_exp2(s[i] - m);
        row_sum += s[i];
      }
      row_sum *= rescale;
    }
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {  // P packed over a copy: over the accumulators themselves, without a
      float logits[32];                 // softmax between, ptxas serialised the wgmma (C7511)
#pragma unroll
      for (int i = 0; i < 32; ++i) logits[i] = tile_logits[t][i];
      p_fragments<T>(tile_pa[t], logits);
    }
    if constexpr (kTurns == Turns::kBurst) {  // this tile's P V and the next one's Q K^T in one turn
      turn_wait(w);
      wgmma::pv_issue<T, kD, KEYS>(rows.o, pa, v_tile);
      wgmma::qk_issue<T, kD, KEYS>(s, qa, k_tile);
      wgmma::wait<0>(rows.o);
      wgmma::wait<0>(s);
      turn_pass(w);
    } else {
      wgmma::pv_issue<T, kD, KEYS>(rows.o, pa, v_tile);
      wgmma::wait<0>(rows.o);
    }
  }
  if (kTurns != Turns::kFree && w == 0) turn_wait(w);  // warpgroup 1's last pass
  const long long elapsed = clock64() - start;
  float total = row_sum;
  for (int i = 0; i < kD / 2; ++i) total += rows.o[i];
  if (total == 1234.5f) sink[threadIdx.x] = total;  // keeps the products alive
  if (threadIdx.x == 0) cycles[blockIdx.x] = elapsed;
#endif
}

struct Result {
  double flops_per_sm_cycle, tflops, mhz;
};

template <int KEYS, Softmax kSoftmax, Turns kTurns, int WARPGROUPS, bool kIdleProducer, bool kQInSmem>
Result run(int sms, int warpgroups, int iterations) {
  const int smem = 2 * kTileBytes<KEYS> + (kQInSmem ? WARPGROUPS * kTileBytes<64> : 0);
  const int threads = 128 * (warpgroups + kIdleProducer);
  auto kernel = consumer_rate<KEYS, kSoftmax, kTurns, WARPGROUPS, kIdleProducer, kQInSmem>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  long long* cycles;
  float* sink;
  cudaMalloc(&cycles, sms * sizeof(long long));
  cudaMalloc(&sink, 256 * sizeof(float));
  kernel<<<sms, threads, smem>>>(iterations / 10, cycles, sink);  // warm-up
  cudaEvent_t begin, end;
  cudaEventCreate(&begin);
  cudaEventCreate(&end);
  cudaEventRecord(begin);
  kernel<<<sms, threads, smem>>>(iterations, cycles, sink);
  cudaEventRecord(end);
  cudaEventSynchronize(end);
  if (cudaGetLastError() != cudaSuccess) {
    std::fprintf(stderr, "launch failed: %s\n", cudaGetErrorString(cudaGetLastError()));
    std::exit(1);
  }
  float ms = 0.f;
  cudaEventElapsedTime(&ms, begin, end);
  std::vector<long long> host(sms);
  cudaMemcpy(host.data(), cycles, sms * sizeof(long long), cudaMemcpyDeviceToHost);
  long long longest = 0;
  for (long long c : host) longest = c > longest ? c : longest;
  cudaFree(cycles);
  cudaFree(sink);
  const double flops_per_cta = 4.0 * 64 * KEYS * kD * warpgroups * double(iterations);  // Q K^T and P V
  return {flops_per_cta / double(longest), flops_per_cta * sms / (ms * 1e-3) / 1e12, double(longest) / (ms * 1e3)};
}

// warpgroups consumers per SM, the kernel compiled for up to kMaxWarpgroups of them (two: 255 registers each;
// three: 168 each, or 160 beside an idle producer)
template <int KEYS, Softmax kSoftmax, Turns kTurns = Turns::kFree, int kMaxWarpgroups = 2, bool kIdleProducer = false,
          bool kQInSmem = false>
void report(int sms, int warpgroups, int iterations) {
  const Result r = run<KEYS, kSoftmax, kTurns, kMaxWarpgroups, kIdleProducer, kQInSmem>(sms, warpgroups, iterations);
  std::printf("| %d keys (Q K^T m64n%dk16%s) | %s | %d%s | %s | %.0f | %.0f | %.0f |\n", KEYS, KEYS,
              kQInSmem ? ", Q from shared memory" : "", kSoftmaxName[int(kSoftmax)], warpgroups,
              kIdleProducer ? " (160 registers, beside an idle producer)" : "", kTurnsName[int(kTurns)],
              r.flops_per_sm_cycle, r.tflops, r.mhz);
}

}  // namespace

int main() {
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  if (prop.major != 9) {
    std::fprintf(stderr, "wgmma_rate needs an sm_90a GPU (found %s, sm_%d%d)\n", prop.name, prop.major, prop.minor);
    return 1;
  }
  const int sms = prop.multiProcessorCount, iterations = 20000;
  std::printf("%s, %d SMs, %d tiles per consumer\n\n", prop.name, sms, iterations);
  std::printf("| tile | softmax | consumers per SM | turns | FLOP per SM cycle | TFLOP/s | mean MHz (clock64 / time) |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (int warpgroups = 1; warpgroups <= 2; ++warpgroups) {
    report<64, Softmax::kNone>(sms, warpgroups, iterations);
    report<128, Softmax::kNone>(sms, warpgroups, iterations);
    report<64, Softmax::kBare>(sms, warpgroups, iterations);
    report<128, Softmax::kBare>(sms, warpgroups, iterations);
    report<64, Softmax::kKernel>(sms, warpgroups, iterations);
    report<128, Softmax::kKernel>(sms, warpgroups, iterations);
  }
  report<64, Softmax::kKernelMasked>(sms, 2, iterations);
  report<128, Softmax::kKernelMasked>(sms, 2, iterations);
  // three consumers, as a CTA of three query blocks would run them (64-key tiles: 128-key ones do not fit in
  // 168 registers, nor, by 16 bytes of spills and a serialised wgmma, the masked softmax)
  report<64, Softmax::kNone, Turns::kFree, 3>(sms, 3, iterations);
  report<64, Softmax::kBare, Turns::kFree, 3>(sms, 3, iterations);
  report<64, Softmax::kKernel, Turns::kFree, 3>(sms, 3, iterations);
  report<64, Softmax::kKernel, Turns::kFree, 3, true>(sms, 3, iterations);
  report<64, Softmax::kKernel, Turns::kFree, 2, false, true>(sms, 2, iterations);
  report<64, Softmax::kKernel, Turns::kFree, 3, true, true>(sms, 3, iterations);
  report<64, Softmax::kBare, Turns::kQk>(sms, 2, iterations);
  report<64, Softmax::kBare, Turns::kBurst>(sms, 2, iterations);
  report<128, Softmax::kBare, Turns::kQk>(sms, 2, iterations);
  report<128, Softmax::kBare, Turns::kBurst>(sms, 2, iterations);
  return 0;
}
