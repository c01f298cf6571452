#!/usr/bin/env bash
# On the CPU machine: builds the kernel library of other branches or commits into build-var-<ref>/ (slashes
# become dashes), each from a temporary git worktree, to carry to the GPU machine and try there beside the
# tree's own build: `bash bench/device.sh build,variants` (carry .whl, .carry, build-var-*/libminfer_kernels.so
# and build-var-*/ptx80/libminfer_kernels.so).
# Example: bash bench/build_variants.sh next/softmax-ilp next/lazy-rescale
set -euo pipefail
cd "$(dirname "$0")/.."
for ref in "$@"; do
  out=build-var-${ref//\//-}
  rm -rf "$out"  # its CMake cache names the temporary worktree of an earlier build
  tree=$(mktemp -d)
  git worktree add --detach -q "$tree" "$ref"
  # the library, and beside it in ptx80/ the same code as compute_80 PTX only (the A100 path, JIT-compiled there)
  { cmake -S "$tree" -B "$out" -DCMAKE_BUILD_TYPE=Release && cmake --build "$out" -j --target minfer_kernels \
      && cmake -S "$tree" -B "$out/ptx80" -DCMAKE_BUILD_TYPE=Release \
        "-DMINFER_CUDA_GENCODE=-gencode=arch=compute_80,code=compute_80" \
      && cmake --build "$out/ptx80" -j --target minfer_kernels; } >"$out.log" 2>&1 \
    || { tail -20 "$out.log"; git worktree remove --force "$tree"; exit 1; }
  git worktree remove --force "$tree"
  rm -f "$out.log"
  echo "$ref ($(git rev-parse --short "$ref")): $out/libminfer_kernels.so and $out/ptx80/libminfer_kernels.so"
done
