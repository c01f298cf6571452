"""Where the warps of a profiled kernel wait, per region and per instruction, from an Nsight Compute report.

`bench/device.sh profile` runs `ncu --set full`, whose source counters sample every warp's state at a fixed
interval and keep the samples per SASS instruction. This reads them back on any machine (no GPU, no ncu: the
`ncu_report` wheel, `pip install ncu_report`) and splits the kernel at its `USETMAXREG` instructions, so the
sm_90a attention kernel's consumer and producer warpgroups are told apart. Shares are of all samples of the
kernel (every warp, whatever it waits for).
Run: python bench/ncu_stalls.py out/attention-build.ncu-rep [--top 25]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

STALL_PREFIX = "smsp__pcsamp_warps_issue_stalled_"


def per_instruction(action, metric: str) -> dict[int, int]:
    """A source-counter metric as {instruction address: value}."""
    values = action.metric_by_name(metric)
    addresses = values.correlation_ids()
    return {addresses.as_uint64(i): values.as_uint64(i) for i in range(values.num_instances())}


def load(report: Path) -> tuple[object, dict[str, dict[int, int]]]:
    """The report's first kernel and its warp samples per stall reason and instruction."""
    import ncu_report  # imported here so that --help works without the wheel

    action = ncu_report.load_report(str(report)).range_by_idx(0).action_by_idx(0)
    reasons = [n for n in action.metric_names() if n.startswith(STALL_PREFIX) and not n.endswith("_not_issued")]
    return action, {name.removeprefix(STALL_PREFIX): per_instruction(action, name) for name in reasons}


def regions(action, addresses: list[int]) -> list[tuple[str, int, int]]:
    """(name, first, end) address ranges split at each USETMAXREG, named after the instruction that opens them."""
    cuts = [(a, action.sass_by_pc(a)) for a in addresses if "USETMAXREG" in action.sass_by_pc(a)]
    bounds = [(addresses[0], "start")] + [(a, text.split()[0]) for a, text in cuts] + [(addresses[-1] + 1, "")]
    return [(bounds[i][1], bounds[i][0], bounds[i + 1][0]) for i in range(len(bounds) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--top", type=int, default=25, help="instructions to list, most samples first")
    args = parser.parse_args()
    action, samples = load(args.report)
    per_address: Counter[int] = Counter()
    for by_address in samples.values():
        per_address.update(by_address)
    total = sum(per_address.values())
    print(f"{action.name()}: {total} warp samples")
    for reason, count in sorted(((r, sum(d.values())) for r, d in samples.items()), key=lambda x: -x[1])[:10]:
        print(f"  {reason:22s} {count / total:6.1%}")
    addresses = sorted(per_address)
    for name, first, end in regions(action, addresses):
        count = sum(v for a, v in per_address.items() if first <= a < end)
        print(f"region from {name} at {first & 0xFFFF:#06x}: {count / total:6.1%} of samples")
    print(f"top {args.top} instructions (address, share, SASS, main stall reasons):")
    for address, count in per_address.most_common(args.top):
        reasons = sorted(((d.get(address, 0), r) for r, d in samples.items()), reverse=True)[:2]
        why = ", ".join(f"{r} {c / count:.0%}" for c, r in reasons if c)
        print(f"  {address & 0xFFFF:#06x} {count / total:5.1%}  {action.sass_by_pc(address)[:58]:58s} {why}")


if __name__ == "__main__":
    main()
