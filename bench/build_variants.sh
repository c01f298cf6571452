#!/usr/bin/env bash
# On the CPU machine: builds the kernel library of other branches or commits into build-var-<ref>/ (slashes
# become dashes), each from a temporary git worktree, to carry to the GPU machine and try there beside the
# tree's own build: `bash bench/device.sh build,variants`. Each folder holds only libminfer_kernels.so and
# ptx80/libminfer_kernels.so (about 7 MB), so carrying the folder takes one of the device's eight carry paths.
# Example: bash bench/build_variants.sh next/softmax-ilp next/lazy-rescale
set -euo pipefail
cd "$(dirname "$0")/.."
for ref in "$@"; do
  out=build-var-${ref//\//-}
  tree=$(mktemp -d)
  git worktree add --detach -q "$tree" "$ref"
  # the library, and beside it in ptx80/ the same code as compute_80 PTX only (the A100 path, JIT-compiled there)
  { cmake -S "$tree" -B "$tree/build" -DCMAKE_BUILD_TYPE=Release && cmake --build "$tree/build" -j --target minfer_kernels \
      && cmake -S "$tree" -B "$tree/build-ptx80" -DCMAKE_BUILD_TYPE=Release \
        "-DMINFER_CUDA_GENCODE=-gencode=arch=compute_80,code=compute_80" \
      && cmake --build "$tree/build-ptx80" -j --target minfer_kernels; } >"$out.log" 2>&1 \
    || { tail -20 "$out.log"; git worktree remove --force "$tree"; exit 1; }
  rm -rf "$out" && mkdir -p "$out/ptx80"
  cp "$tree/build/libminfer_kernels.so" "$out/" && cp "$tree/build-ptx80/libminfer_kernels.so" "$out/ptx80/"
  git worktree remove --force "$tree"
  rm -f "$out.log"
  echo "$ref ($(git rev-parse --short "$ref")): $out/libminfer_kernels.so and $out/ptx80/libminfer_kernels.so"
done
