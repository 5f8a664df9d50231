"""Kernel time per training step from Nsight Compute's raw CSV (`.ci/gpu`'s `profile` step):
where a step's GPU time goes, kernel by kernel, and how many kernels it launches.

    python kernel_profile.py ONE_STEP.csv TWO_STEPS.csv [--top 25]

Each file is `ncu --csv --page raw --metrics gpu__time_duration.sum --log-file FILE` of the
same program running one and two steps; their difference is exactly one step, without the
set-up's kernels (weights, inputs, the first step's one-time work stays in both).
"""

import argparse
import collections
import csv
import sys


def read(path):
    """Kernel name -> (launches, nanoseconds)."""
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        sys.exit(f"{path}: no ncu CSV header (\"ID\",...) found; was the program profiled?")
    totals = collections.defaultdict(lambda: [0, 0.0])
    scale = 1.0
    for row in csv.DictReader(lines[start:]):
        duration = row.get("gpu__time_duration.sum", "").replace(",", "")
        if not row["ID"].strip().isdigit():
            # The units row.
            scale = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9}.get(duration, scale)
            continue
        if not duration:
            continue
        entry = totals[row["Kernel Name"]]
        entry[0] += 1
        entry[1] += float(duration) * scale
    return totals


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("one")
    parser.add_argument("two")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    one, two = read(args.one), read(args.two)
    step = []
    for name in set(one) | set(two):
        (c1, t1), (c2, t2) = one.get(name, (0, 0.0)), two.get(name, (0, 0.0))
        if c2 - c1:
            step.append((t2 - t1, c2 - c1, name))
    step.sort(reverse=True)
    total_time = sum(t for t, _, _ in step)
    total_count = sum(c for _, c, _ in step)
    print(f"one step: {total_count} kernels, {total_time / 1e6:.2f} ms of kernel time (serialised by the profiler)")
    print(f"{'ms':>9} {'share':>6} {'launches':>8}  kernel")
    for t, c, name in step[: args.top]:
        print(f"{t / 1e6:9.3f} {100 * t / max(total_time, 1):5.1f}% {c:8d}  {name[:110]}")


if __name__ == "__main__":
    main()
