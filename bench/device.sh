#!/usr/bin/env bash
# One command on the GPU machine: build the native code, run every GPU test, compute-sanitizer at small
# sizes, the kernel benchmark, the pattern-search timing and the end-to-end pre-fill benchmark.
# Stages (comma-separated): all (every stage but the optional ones below), build, test, sanitize, bench, search,
# e2e, and the optional index (bench/index_kernels.py: each kernel's time, beside carried builds), profile (ncu),
# variants (other builds from bench/build_variants.sh: the GPU kernel tests on each, then one benchmark of the tree
# beside those that passed), wgmma (bench/wgmma_rate.cu: the consumer's tensor rate alone) and selection (the
# LLM-like draws' selected fractions over SELECTION_SEEDS, then the benchmark on seed 2, the median draw and the draw
# nearest the pinned page's fractions). Logs go to $OUT. BENCH_ARGS, INDEX_ARGS, E2E_ARGS and PYTEST_ARGS pass
# options on.
# Example (device tool, with carry [".whl", ".carry"]): bash bench/device.sh build,test,search,e2e
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT" /tmp/minfer-path
ln -sfn "$PWD" /tmp/minfer-path/minfer  # the repository root is the package `minfer`
export PYTHONPATH=/tmp/minfer-path${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
wheels=$(ls .whl/*.whl 2>/dev/null)
if [[ -n $wheels ]]; then  # what the GPU image lacks (../shared/gpu/README.md): graphsurgeon, polygraphy, typer, ...
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/minfer-site $wheels \
    && export PYTHONPATH=$PYTHONPATH:/tmp/minfer-site
fi
stages=${1:-all}
optional=",index,profile,variants,wgmma,selection,"  # stages `all` leaves out
has() { [[ ($stages == all && $optional != *,$1,*) || ,$stages, == *,$1,* ]]; }
status=0

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
if has build || [[ ! -f build/libminfer_kernels.so ]]; then
  start=$(date +%s)
  { cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release && cmake --build build -j "$(nproc)"; } >"$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; exit 1; }
  echo "build: $(($(date +%s) - start)) s"
  # the sm_90a attention kernel must run on Hopper's warpgroup MMA (HGMMA), not on HMMA
  command -v cuobjdump >/dev/null && echo "sm_90a SASS: $(cuobjdump -sass -arch sm_90a build/libminfer_kernels.so | grep -c HGMMA) HGMMA instructions" \
    && python3 bench/sass_order.py build/libminfer_kernels.so | tail -1  # did ptxas keep the softmax beside P V?
  # the A100 path as PTX only, JIT-compiled on this GPU by tests/test_kernels_gpu.py::test_sm80_path_from_ptx
  { cmake -S . -B build-ptx80 -G Ninja -DCMAKE_BUILD_TYPE=Release \
      "-DMINFER_CUDA_GENCODE=-gencode=arch=compute_80,code=compute_80" && cmake --build build-ptx80 -j "$(nproc)" \
      --target minfer_kernels; } >"$OUT/build-ptx80.log" 2>&1 || { tail -40 "$OUT/build-ptx80.log"; exit 1; }
fi
if has test; then
  python -m pytest -q -rs -m gpu --durations=10 tests/ ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/tests.log" | tail -25
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if has sanitize; then
  for tool in memcheck racecheck synccheck initcheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 9 --target-processes all \
      python -m pytest -q -x tests/test_kernels_gpu.py -k "small_matrix and (65-4-128-torch.bfloat16 or 1000-8-64-torch.float16)" \
      >"$OUT/sanitize-$tool.log" 2>&1
    rc=$?
    echo "compute-sanitizer $tool: exit $rc; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize-$tool.log" | tail -1); $(grep -E 'passed|failed' "$OUT/sanitize-$tool.log" | tail -1)"
    [[ $rc == 0 ]] || { status=1; grep -m5 -A12 '=========' "$OUT/sanitize-$tool.log" | head -40; }
  done
fi
if has bench; then
  python bench/bench_kernels.py ${BENCH_ARGS:-} --out "$OUT/bench.md" 2>&1 | tee "$OUT/bench.log" | tail -40
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if has variants; then
  compare=()
  for lib in build-var-*/libminfer_kernels.so; do
    [[ -f $lib ]] || continue
    name=$(dirname "$lib")
    # a hung variant must not take the whole run: each gets VARIANT_TIMEOUT seconds. The A100 path runs from the
    # variant's own compute_80 build (bench/build_variants.sh puts it in ptx80/), or not at all.
    ptx80=$PWD/$name/ptx80/libminfer_kernels.so
    if [[ -f $ptx80 ]]; then skip=(); else skip=(--deselect tests/test_kernels_gpu.py::test_sm80_path_from_ptx); fi
    MINFER_KERNELS_LIB=$PWD/$lib MINFER_PTX80_LIB=$ptx80 timeout "${VARIANT_TIMEOUT:-240}" \
      python -m pytest -q -x -m gpu tests/test_kernels_gpu.py "${skip[@]}" >"$OUT/tests-$name.log" 2>&1
    rc=$?
    echo "$name: tests exit $rc ($(tail -1 "$OUT/tests-$name.log"))"
    if [[ $rc == 0 ]]; then compare+=(--compare-library "$lib"); else status=1; fi
  done
  python bench/bench_kernels.py ${BENCH_ARGS:-} "${compare[@]}" --out "$OUT/variants.md" 2>&1 | tee "$OUT/variants.log" | grep "^|"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if has index; then  # the time of each kernel of the benchmark layer's launch, index building broken down, for the
  # tree's build and each carried build-var-*/ beside it (their whole calls timed in turns)
  libs=(--library build/libminfer_kernels.so)
  for lib in build-var-*/libminfer_kernels.so; do [[ -f $lib ]] && libs+=(--library "$lib"); done
  python bench/index_kernels.py "${libs[@]}" ${INDEX_ARGS:-} --out "$OUT/index-kernels.md" 2>&1 | tee "$OUT/index-kernels.log" | grep "^|"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if has wgmma; then  # 64- against 128-key tiles, one to three consumers, softmax or none, turns, Q in registers or not
  build/wgmma_rate | tee "$OUT/wgmma_rate.md"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if has selection; then  # where seed 2, the benchmark's default draw, lies among the family's draws
  lengths=131072,262144,524288,1048576
  python bench/selection_by_seed.py --device cuda --seq-lens $lengths --seeds "${SELECTION_SEEDS:-0-99}" \
    --max-seconds "${SELECTION_SECONDS:-240}" --out "$OUT/selection.md" >"$OUT/selection.log" 2>&1 \
    && cat "$OUT/selection.md" || { tail -20 "$OUT/selection.log"; status=1; }
  seeds=$( (echo 2; grep -oP 'draw.*: seed \K[0-9]+' "$OUT/selection.md") | sort -un | paste -sd,)
  python bench/bench_kernels.py --lengths $lengths --families llm-like --llm-seeds "$seeds" --dense cudnn \
    --no-dense-in-turns --out "$OUT/selection-bench.md" 2>&1 | tee "$OUT/selection-bench.log" | grep "^|"
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if has search; then  # issue 5: one 8B-shaped layer at 128K
  timeout "${SEARCH_TIMEOUT:-420}" python bench/search_timing.py --seq-len 131072 --device cuda --cpu-threads "$(nproc)" ${SEARCH_ARGS:-} 2>&1 \
    | tee "$OUT/search.log" | grep -v "heads (" | tail -8
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if has e2e; then  # issue 7: the 8B-shaped model, sparse against dense SDPA
  python bench/e2e_prefill.py --patterns "${E2E_PATTERNS:-.carry/minference-configs/Llama_3_8B_Instruct_262k_kv_out_v32_fit_o_best_pattern.json}" \
    --out "$OUT/e2e.json" ${E2E_ARGS:-} 2>&1 | tee "$OUT/e2e.log" | tail -20
  [[ ${PIPESTATUS[0]} == 0 ]] || status=1
fi
if has profile; then  # Nsight Compute on the attention kernel (PROFILE_FAMILY, PROFILE_LENGTH; default i.i.d. at 128K;
  # PROFILE_KERNEL, a regex, and PROFILE_COUNT launches of it: other kernels, e.g. "scores_kernel|select_kernel" and 2;
  # PROFILE_NCU_ARGS instead of --set full, e.g. "--section SpeedOfLight --section MemoryWorkloadAnalysis" where a
  # full set's replay of one launch does not finish: at 1M i.i.d. it had not in 290 s)
  # of each library in PROFILE_LIBS (default the tree's build), e.g. diagnostic builds beside the tree
  for lib in ${PROFILE_LIBS:-build/libminfer_kernels.so}; do
    rep="$OUT/attention-$(basename "$(dirname "$lib")")"
    {
      echo "== $lib"
      MINFER_KERNELS_LIB=$PWD/$lib timeout "${PROFILE_TIMEOUT:-300}" ncu --clock-control none --kernel-name "regex:${PROFILE_KERNEL:-attention_kernel}" --launch-count "${PROFILE_COUNT:-1}" \
        ${PROFILE_NCU_ARGS:---set full} -o "$rep" python bench/bench_kernels.py --lengths "${PROFILE_LENGTH:-131072}" \
        --families "${PROFILE_FAMILY:-iid}" --dense cudnn >"$rep.log" 2>&1
      ncu --import "$rep.ncu-rep" --page details --print-units base 2>/dev/null \
        | grep -E "Duration|Elapsed Cycles|SM Active Cycles|Registers|Achieved Occupancy|Theoretical Occupancy|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|L1/TEX Cache Throughput|L2 Cache Throughput|L2 Hit|Warp Cycles Per Issued|Block Limit|SM Frequency|DRAM Frequency" | head -40
      # stall reasons (cycles per issued instruction that warps spend in each state, largest first), then how
      # busy the tensor pipes, the L2 and shared memory were, and shared memory's bank conflicts
      ncu --import "$rep.ncu-rep" --page raw --csv 2>/dev/null | python3 -c '
import csv, sys
rows = list(csv.reader(sys.stdin))  # metric names, units, then one row per profiled kernel
if len(rows) < 3:
    sys.exit("no profiled kernel in the report (see the .log beside it)")
def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None
stalls = [(number(v), n) for n, v in zip(rows[0], rows[2]) if "issue_stalled" in n and n.endswith("per_issue_active.ratio")]
for value, name in sorted((s for s in stalls if s[0] is not None), reverse=True)[:12]:
    print(f"{value:8.2f}  {name}")
for name, value in zip(rows[0], rows[2]):
    busy = ("pipe_tensor" in name or name.startswith("lts__t_") or "mem_shared" in name) and name.endswith("sum.pct_of_peak_sustained_elapsed")
    if busy or ("mem_shared" in name and "bank_conflicts" in name and name.endswith(".sum")):
        print(f"{value:>8}  {name}")'
    } 2>&1 | tee -a "$OUT/profile.txt"
  done
fi
exit $status
