"""Measure how far the learning tests' results move with the training seed and the CPU kernels.

Usage::

    python benchmarks/learning_spread.py [--seeds 0 1 2] [--kernels default avx2 avx512] [--workers 2]
                                         [--out benchmarks/results/learning_spread] [-k EXPR]

The tests marked ``learning`` train a tiny model and assert that it learned. Their float trajectories depend on
the order of every sum, and that order changes with torch's CPU kernels (``ATEN_CPU_CAPABILITY``), MKL's and
oneDNN's instruction sets and the seed. This runs ``pytest -m learning --learning-seed S`` under each kernel
set and seed, collects what each test recorded with the ``measured`` fixture (``--junitxml``), and prints, per
test and quantity, the range within each kernel set and over all runs, so that every threshold can sit at a
margin from the measured spread. Kernel sets:

* ``default``: ``ATEN_CPU_CAPABILITY=default``, torch's scalar kernels (what ``.ci/run`` runs the learning
  tests under once more);
* ``avx2``: ATen, MKL and oneDNN held to AVX2, as on a CPU without AVX-512;
* ``avx512``: ATen's AVX-512 kernels, where the CPU has them (skipped elsewhere).

Each (kernel, seed) run writes its own XML file under ``--out`` and is not run again when that file exists, so
an interrupted sweep resumes; ``summary.json`` holds every value. Exit status 1 when a test failed (or errored)
in any run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from vsekit.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]

KERNELS = {
    "default": {"ATEN_CPU_CAPABILITY": "default"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
}


def capability(env: dict[str, str]) -> str:
    """The kernel set torch actually picks under ``env`` (it falls back when the CPU lacks the one asked for)."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def read_junit(path: Path) -> dict[str, dict]:
    """``{test id: {"outcome": ..., "values": {name: float}}}`` from one pytest ``--junitxml`` file."""
    tests = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
        values = {p.get("name"): float(p.get("value")) for p in case.iter("property")}
        tests[f"{module}::{case.get('name')}"] = {"outcome": outcome, "values": values}
    return tests


def run_one(kernel: str, seed: int, xml: Path, workers: int, select: str | None) -> None:
    env = {**os.environ, **KERNELS[kernel]}
    partial = xml.with_suffix(".partial")  # renamed once pytest is done, so a killed run is not taken as a result
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "learning", f"--learning-seed={seed}", f"--junitxml={partial}",
           "-p", "no:cacheprovider", "-o", "junit_family=xunit1"]  # fmt: skip
    if workers > 1:
        cmd += ["-n", str(workers)]
    if select:
        cmd += ["-k", select]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    last = proc.stdout.strip().splitlines()[-1:] or ["(no output)"]
    print(f"  {kernel:7s} seed {seed}: {last[0]}  ({time.perf_counter() - start:.0f} s)", flush=True)
    if not partial.is_file():
        sys.exit(f"error: pytest wrote no {partial}: {proc.stderr.strip()[-500:]}")
    partial.replace(xml)


def summarise(runs: dict[tuple[str, int], dict]) -> dict[str, dict]:
    """Per test and quantity: the values of every run, and min / median / max within each kernel and overall."""
    out: dict[str, dict] = {}
    for (kernel, seed), tests in runs.items():
        for test, rec in tests.items():
            entry = out.setdefault(test, {"failed_in": [], "values": {}})
            if rec["outcome"] in ("failed", "error"):
                entry["failed_in"].append(f"{kernel}/seed{seed}")
            for name, value in rec["values"].items():
                entry["values"].setdefault(name, {}).setdefault(kernel, {})[str(seed)] = value
    for entry in out.values():
        for name, by_kernel in entry["values"].items():
            every = [v for seeds in by_kernel.values() for v in seeds.values()]
            by_kernel["all"] = {"min": min(every), "median": statistics.median(every), "max": max(every)}
    return out


def print_table(summary: dict[str, dict], kernels: list[str]) -> None:
    head = ["test :: quantity", *(f"{k} (min..max)" for k in kernels), "all: min / median / max", "failed in"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for test, entry in sorted(summary.items()):
        for name, by_kernel in entry["values"].items():
            cells = [f"{test} :: {name}"]
            for k in kernels:
                vals = list(by_kernel.get(k, {}).values())
                cells.append(f"{min(vals):.4g}..{max(vals):.4g}" if vals else "-")
            a = by_kernel["all"]
            cells += [f"{a['min']:.4g} / {a['median']:.4g} / {a['max']:.4g}", ", ".join(entry["failed_in"]) or "-"]
            print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kernels", nargs="+", choices=sorted(KERNELS), default=["default", "avx2", "avx512"])
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers per run (default 2)")
    parser.add_argument("-k", dest="select", help="pytest -k expression: a subset of the learning tests")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "learning_spread")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    kernels = []
    for kernel in args.kernels:
        got = capability({**os.environ, **KERNELS[kernel]})
        if got.lower() != kernel:
            print(f"skipping kernel set {kernel}: this CPU runs {got} under it")
            continue
        kernels.append(kernel)
    runs = {}
    for kernel in kernels:
        for seed in args.seeds:
            xml = args.out / f"{kernel}_seed{seed}.xml"
            if not xml.is_file():
                run_one(kernel, seed, xml, args.workers, args.select)
            runs[kernel, seed] = read_junit(xml)
    summary = summarise(runs)
    print_table(summary, kernels)
    record = {"kernels": {k: KERNELS[k] for k in kernels}, "seeds": args.seeds, "tests": summary}
    atomic_write_json(record, args.out / "summary.json")
    print(f"wrote {args.out / 'summary.json'}")
    return 1 if any(entry["failed_in"] for entry in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
