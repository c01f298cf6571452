// CPU check for next/fa3-desc: a k-step's wgmma descriptor built from scratch equals the tile's descriptor plus
// the step's offset (wgmma.cuh: advance), for every stage, k-step and 1 KB aligned tile address below 227 KB.
// Run: nvcc -std=c++17 -isystem <cutlass include> bench/descriptor_advance_check.cu -o /tmp/check && /tmp/check
#include <cute/arch/mma_sm90_desc.hpp>
#include <cstdio>
#include <cstdint>
static uint64_t descriptor(uint32_t addr, uint32_t leading_bytes, uint32_t stride_bytes) {
  cute::GmmaDescriptor d;
  d.bitfield.start_address_ = uint16_t(addr >> 4);
  d.bitfield.leading_byte_offset_ = uint16_t(leading_bytes >> 4);
  d.bitfield.stride_byte_offset_ = uint16_t(stride_bytes >> 4);
  d.bitfield.base_offset_ = 0;
  d.bitfield.layout_type_ = uint8_t(cute::SM90::GMMA::LayoutType::B128);
  return d.desc_;
}
static uint64_t advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }
int main() {
  long bad = 0, n = 0;
  for (int D : {64, 128}) {
    const uint32_t col_block = 64 * 128;  // Tile<D>::kColumnBlockBytes
    const uint32_t tile_bytes = D * 64 * 2;
    for (uint32_t base = 0; base + 6 * tile_bytes <= 232448; base += 1024)
      for (int stage = 0; stage < 3; ++stage) {
        const uint32_t tile = base + stage * tile_bytes;
        for (int kk = 0; kk < D / 16; ++kk, ++n)
          bad += descriptor(tile + (kk >> 2) * col_block + (kk & 3) * 32, 16, 1024) !=
                 advance(descriptor(tile, 16, 1024), (kk >> 2) * col_block + (kk & 3) * 32);
        for (int kk = 0; kk < 4; ++kk, ++n)
          bad += descriptor(tile + kk * 16 * 128, col_block, 1024) != advance(descriptor(tile, col_block, 1024), kk * 16 * 128);
      }
  }
  printf("%ld descriptors, %ld differ\n", n, bad);
  return bad != 0;
}
