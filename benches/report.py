#!/usr/bin/env python3
"""Turns criterion's results into the markdown tables of docs/benchmarks.md.

Usage: python3 benches/report.py [CRITERION_DIR]
CRITERION_DIR defaults to $CARGO_TARGET_DIR/criterion (or target/criterion).

Throughput is operations per second (an append, a batch of 100 counted as
100 messages, or one read query), from criterion's mean time per iteration.
"""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path


def criterion_dir() -> Path:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    return Path(target) / "criterion"


def load(root: Path):
    """{(group, function, value): ops_per_second}"""
    results = {}
    for bench in root.glob("**/new/benchmark.json"):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        mean_ns = est["mean"]["point_estimate"]
        elements = (meta.get("throughput") or {}).get("Elements", 1)
        key = (meta["group_id"], meta.get("function_id") or "", meta.get("value_str") or "")
        results[key] = elements * 1e9 / mean_ns
    return results


def fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:,.1f}"


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count()
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", "/tmp"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {cores} cores{mem}, {platform.system()} {platform.release()}, data on {fs or 'unknown fs'}"


def main() -> None:
    results = load(criterion_dir())
    if not results:
        sys.exit("no criterion results found; run `cargo bench -p imstore-benches --bench timelines` first")
    print(f"Machine: {machine()}\n")
    rows = sorted({(g, v) for (g, f, v) in results if g != "segment_capacity" and not g.startswith("im_")})
    print("| workload | imstore ops/s | rocksdb_kv ops/s | sqlite ops/s | × rocksdb_kv | × sqlite |")
    print("|---|---:|---:|---:|---:|---:|")
    for group, value in rows:
        ours = results.get((group, "imstore", value))
        kv = results.get((group, "rocksdb_kv", value))
        sq = results.get((group, "sqlite", value))
        cells = [fmt(x) if x else "–" for x in (ours, kv, sq)]
        ratios = [f"{ours / x:.1f}×" if ours and x else "–" for x in (kv, sq)]
        print(f"| {group} {value} | " + " | ".join(cells + ratios) + " |")

    im_rows = sorted({(g, v) for (g, f, v) in results if g.startswith("im_")})
    if im_rows:
        print("\nIM operations (`--bench im`), operations per second and mean latency:\n")
        print("| workload | imstore ops/s | imstore mean | sqlite ops/s | sqlite mean | × sqlite |")
        print("|---|---:|---:|---:|---:|---:|")
        for group, value in im_rows:
            ours = results.get((group, "imstore", value))
            sq = results.get((group, "sqlite", value))
            def lat(x):
                if not x:
                    return "–"
                us = 1e6 / x
                return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"
            ratio = f"{ours / sq:.1f}×" if ours and sq else "–"
            print(f"| {group.removeprefix('im_')} {value} | {fmt(ours) if ours else '–'} | {lat(ours)} | "
                  f"{fmt(sq) if sq else '–'} | {lat(sq)} | {ratio} |")

    caps = sorted({int(v) for (g, f, v) in results if g == "segment_capacity"})
    if caps:
        print("\nSegment capacity (records per segment), imstore reads/s:\n")
        funcs = sorted({f for (g, f, v) in results if g == "segment_capacity"})
        print("| records | " + " | ".join(funcs) + " |")
        print("|---:|" + "---:|" * len(funcs))
        for cap in caps:
            cells = [fmt(results.get(("segment_capacity", f, str(cap)), 0)) for f in funcs]
            print(f"| {cap} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
