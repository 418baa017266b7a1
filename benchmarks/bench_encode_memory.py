"""Peak memory of writing a freshly encoded collection into an index, as ``vsekit encode`` does from scratch.

``vsekit encode`` keeps what it embeds in ``pending/`` (:class:`vsekit.index.pending.PendingEmbeddings`, a file
every 4,096 items) and then writes the index's shards from it (:func:`vsekit.index.store.write_part`). This
benchmark drives those two library steps with ``--items`` random ``--dim``-d embeddings in batches of 256 (the
model's part of an encode is left out: it does not grow with the collection) and reports the process's peak
resident set (``VmHWM``, the imports included), the time, and the size of the embeddings themselves; then it
checks that the shards hold the rows it drew, in order.

Each code version runs in a fresh subprocess with its own ``src`` on ``PYTHONPATH``: the current code, and with
``--baseline-src`` an earlier commit's (``git worktree add /tmp/vsekit-before REV``), side by side.

Usage::

    python benchmarks/bench_encode_memory.py [--items 1000000] [--dim 1024] [--baseline-src /tmp/vsekit-before/src]
                                             [--workdir /tmp/bench-encode] [--out benchmarks/results/bench_encode_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 256
EVERY = 4096


def child(items: int, dim: int, work: Path) -> dict[str, float]:
    """Embed-and-write ``items`` rows into ``work`` with the library on ``sys.path``; returns its measurements."""
    import numpy as np
    from bench_search import rss_bytes  # this script's folder is on sys.path

    from vsekit.index.build import stored_embeddings
    from vsekit.index.pending import PendingEmbeddings
    from vsekit.index.store import write_part

    start = time.perf_counter()
    pending = PendingEmbeddings(work / "pending", "sha", dim, every=EVERY)
    rng = np.random.default_rng(0)
    for lo in range(0, items, BATCH):
        n = min(BATCH, items - lo)
        pending.add("text", [f"t{i}" for i in range(lo, lo + n)], rng.standard_normal((n, dim), dtype=np.float32))
    pending.flush("text")
    encoded = time.perf_counter() - start
    arrays, rows = stored_embeddings({}, pending)
    keys = [f"t{i}" for i in range(items)]
    cols = {"id": keys, "path": [None] * items, "caption": keys, "image_id": [None] * items,
            "size": [None] * items, "mtime": [None] * items, "key": keys}  # fmt: skip
    entry = write_part(work, "text", 1, cols, rows["text"], arrays, dim, 65536, None, None)
    measured = {"encode_seconds": encoded, "total_seconds": time.perf_counter() - start, "peak_rss_bytes": rss_bytes("VmHWM")}
    return {**measured, "shards_hold_the_rows": same_rows(work, entry["shards"], items, dim)}


def same_rows(work: Path, shards: list[str], items: int, dim: int) -> bool:
    """Whether the written shards hold, in order, the rows :func:`child` drew (drawn again, batch by batch)."""
    import numpy as np

    stored = (row for name in shards for row in np.load(work / name, mmap_mode="r"))
    rng = np.random.default_rng(0)
    for lo in range(0, items, BATCH):
        drawn = rng.standard_normal((min(BATCH, items - lo), dim), dtype=np.float32)
        if any(not np.array_equal(row, next(stored, None)) for row in drawn):
            return False
    return next(stored, None) is None


def run_version(name: str, src: Path, args: argparse.Namespace) -> dict[str, float]:
    work = args.workdir / name.split()[0]
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", "--items", str(args.items), "--dim", str(args.dim), "--workdir", str(work)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: the run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--baseline-src", type=Path, help="an earlier commit's src, measured beside the current code")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-encode"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_encode_memory.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.items, args.dim, args.workdir)))
        return 0
    versions = {"current": REPO / "src"}
    if args.baseline_src:
        versions = {f"baseline ({args.baseline_src})": args.baseline_src, **versions}
    results = {name: run_version(name, src, args) for name, src in versions.items()}
    size = args.items * args.dim * 4
    print(f"{args.items:,} embeddings of {args.dim} floats ({size / 2**20:,.0f} MB) from pending/ into the index's shards")
    print(f"{'code':40s} {'peak RSS MB':>12s} {'encode s':>9s} {'total s':>8s}  shards right")
    for name, r in results.items():
        print(f"{name:40s} {r['peak_rss_bytes'] / 2**20:12,.0f} {r['encode_seconds']:9.1f} {r['total_seconds']:8.1f}  "
              f"{'yes' if r['shards_hold_the_rows'] else 'NO'}")
    from vsekit.io import atomic_write_json

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json({"items": args.items, "dim": args.dim, "embedding_bytes": size, "results": results}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
