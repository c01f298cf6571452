// CPU check of wgmma.cuh's advance: a k-step's wgmma descriptor built from scratch equals the tile's descriptor
// plus the step's offset, for every k-step and every 1 KB aligned tile that fits below 227 KB, its column blocks
// 8 KB apart or as far apart as a ring of up to 8 stages keeps them: wherever a ring of any depth puts its stages.
// Run: nvcc -std=c++17 -Itrt_plugins/include -Itrt_plugins/kernels -isystem <cutlass include> \
//        bench/descriptor_advance_check.cu -o /tmp/check && /tmp/check
#include <cstdint>
#include <cstdio>

#include "wgmma.cuh"

int main() {
  using minfer::wgmma::advance;
  using minfer::wgmma::descriptor;
  long bad = 0, n = 0;
  const uint32_t col_block = 64 * 128;  // Tile<D>::kColumnBlockBytes
  for (int D : {64, 128}) {
    const uint32_t tile_bytes = D * 64 * 2;
    for (uint32_t tile = 0; tile + tile_bytes <= 232448; tile += 1024) {
      // K-major k-steps with the column blocks next to each other or a ring of 2 to 8 stages apart (the K ring)
      for (uint32_t stride = col_block; stride <= 8 * col_block; stride += col_block) {
        if (tile + (D / 64 - 1) * stride + col_block > 232448) break;
        for (int kk = 0; kk < D / 16; ++kk, ++n)
          bad += descriptor(tile + (kk >> 2) * stride + (kk & 3) * 32, 16, 1024) !=
                 advance(descriptor(tile, 16, 1024), (kk >> 2) * stride + (kk & 3) * 32);
      }
      for (int kk = 0; kk < 4; ++kk, ++n)
        bad += descriptor(tile + kk * 16 * 128, col_block, 1024) != advance(descriptor(tile, col_block, 1024), kk * 16 * 128);
    }
  }
  printf("%ld descriptors, %ld differ\n", n, bad);
  return bad != 0;
}
