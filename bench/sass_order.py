"""The order of the sm_90a attention kernel's machine code: wgmma issues, waits, barrier traffic and softmax.

Tells, on the CPU, whether ptxas kept the overlap the source asks for: in the main loop, the softmax's
exponentials (MUFU.EX2) must come after a P V issue and before the wait that retires it (WARPGROUP.DEPBAR).
Needs cuobjdump: the CUDA toolkit's, or `pip download nvidia-cuda-cuobjdump` and its nvidia/cu13/bin.
Run: python bench/sass_order.py build/libminfer_kernels.so [--kernel bf16-128]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

KERNELS = {  # mangled template arguments of attention_kernel<T, D>
    "bf16-128": "attention_kernelI13__nv_bfloat16Li128E",
    "bf16-64": "attention_kernelI13__nv_bfloat16Li64E",
    "fp16-128": "attention_kernelI6__halfLi128E",
    "fp16-64": "attention_kernelI6__halfLi64E",
}


def events(sass: str, kernel: str) -> list[str]:
    """One token per event, in code order: QK / PV (a wgmma group's last issue), W<n> (wait until n groups
    remain), E (a run of exponentials), A (mbarrier arrive), T (mbarrier wait), EXIT."""
    body = next((f for f in sass.split("Function : ")[1:] if KERNELS[kernel] in f.split("\n", 1)[0]), None)
    if body is None:
        sys.exit(f"{kernel}: no sm_90a attention kernel in this library")
    tokens: list[str] = []
    for line in body.splitlines():
        match = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?(\S+)(.*)", line)
        if not match:
            continue
        op, args = match.groups()
        args = args.split(";", 1)[0]  # the encoding follows in a comment
        if op.startswith("HGMMA") and "gsb0" in args:
            tokens.append("PV" if "tnspB" in args else "QK")
        elif op.startswith("WARPGROUP.DEPBAR"):
            tokens.append("W" + str(int(args.rsplit("0x", 1)[-1], 16)))
        elif op == "MUFU.EX2" and tokens[-1:] != ["E"]:
            tokens.append("E")
        elif op.startswith("SYNCS.ARRIVE"):
            tokens.append("A")
        elif op.startswith("SYNCS.PHASECHK") and "TRYWAIT" in op:
            tokens.append("T")
        elif op == "EXIT":
            tokens.append("EXIT")
    return tokens


def softmax_overlaps_pv(tokens: list[str]) -> bool:
    """True when some exponentials run while a P V is in flight, following the code in order (wgmma groups
    retire in issue order, so W<n> retires all but the newest n)."""
    in_flight: list[str] = []
    for token in tokens:
        if token in ("QK", "PV"):
            in_flight.append(token)
        elif token.startswith("W"):
            del in_flight[: max(len(in_flight) - int(token[1:]), 0)]
        elif token == "E" and "PV" in in_flight:
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", type=Path)
    parser.add_argument("--kernel", choices=KERNELS, default="bf16-128")
    args = parser.parse_args()
    tool = shutil.which("cuobjdump")
    if tool is None:
        sys.exit("cuobjdump not found: put the CUDA toolkit's bin, or nvidia-cuda-cuobjdump's, on PATH")
    sass = subprocess.run(
        [tool, "-sass", "-arch", "sm_90a", str(args.library)], check=True, capture_output=True, text=True
    ).stdout
    tokens = events(sass, args.kernel)
    print(" ".join(tokens))
    print("softmax overlaps P V:", "yes" if softmax_overlaps_pv(tokens) else "no")


if __name__ == "__main__":
    main()
