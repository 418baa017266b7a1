"""Benchmark of the search backends of :mod:`vsekit.index` on synthetic 1024-d embeddings.

For every collection size N (10k and 100k; ``--full`` adds 1M, outside CI):

* data: N unit vectors drawn around ``sqrt(N)`` random centres (clustered, like real embeddings, so an
  approximate index has structure to exploit), stored as float32 ``.npy`` shards of at most 65,536 rows
  exactly as an index stores them; queries: held-out vectors from the same distribution;
* build: exact = writing the shards and opening them memory-mapped; FAISS = training + adding + writing
  the index file (``IVF{4·sqrt(N)},Flat`` with ``nprobe=16``, ``HNSW32`` with ``efSearch=64``: the
  defaults of ``vsekit encode --backend faiss:...``);
* memory: the process RSS growth over build + searches, and the bytes on disk (shards, index file);
* latency: one query at a time (``--queries`` queries, k = 10): p50 and p99 in milliseconds;
* throughput: one call with a batch of ``--batch`` queries, in queries per second;
* recall@10 of every FAISS index against the exact top 10, on all queries.

``--backends ...,auto`` adds ``faiss:auto`` (:mod:`vsekit.index.budget`): the index chosen under
``--max-index-memory`` (default 2GB) for ``--min-recall`` (default 0.9), re-ranked from the shards on disk.
It is built in one fresh subprocess and searched in another (opened as ``Index.load`` opens it), so each
reports its own peak resident set (``VmHWM``: Python, torch and FAISS included), untouched by the exact
backend's memory maps in this process; its build time includes the choice (training, adding and measuring
every candidate tried). Its row also gives the recall the build measured and recorded (held-out rows of the
collection, each left out of its own ranking) next to the recall on the benchmark's queries.

Threads: ``--threads`` (default 1) for torch and FAISS alike, so the numbers compare backends rather
than core counts. Results print as a table and go to ``--out`` (JSON, written atomically).

Usage:
    python benchmarks/bench_search.py [--sizes 10000,100000] [--full] [--dim 1024] [--queries 200]
                                      [--batch 1000] [--threads 1] [--backends exact,ivf,hnsw,auto]
                                      [--max-index-memory 2GB] [--min-recall 0.9] [--workdir DIR]
                                      [--out benchmarks/results/bench_search.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vsekit.index.backends import ExactBackend, FaissBackend, default_search_params, recall_at_k
from vsekit.io import atomic_write, atomic_write_json

SHARD = 65536


def rss_bytes(field: str = "VmRSS") -> int:
    """Resident set size of this process (``field="VmHWM"``: its peak) from Linux ``/proc``; 0 elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def clustered(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator, spread: float = 2.0) -> np.ndarray:
    """``n`` unit vectors: a random centre (N(0, 1) coordinates) plus N(0, spread²) noise, normalised.

    With ``spread = 2`` two members of a cluster have cosine ~0.2 and members of different clusters ~0
    (± 0.03): the top 10 of a query lie in its cluster but are set by the noise, so an approximate
    index must search inside large clusters.
    Made in blocks to bound memory.
    """
    out = np.empty((n, dim), dtype=np.float32)
    for a in range(0, n, SHARD):
        b = min(n, a + SHARD)
        x = centres[rng.integers(0, len(centres), b - a)] + spread * rng.standard_normal((b - a, dim), dtype=np.float32)
        out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def percentile_ms(times: list[float], q: float) -> float:
    return float(np.percentile(np.array(times) * 1000.0, q))


def time_backend(backend: Any, queries: np.ndarray, n_single: int, batch: int) -> dict[str, Any]:
    """Single-query latencies and batch throughput of ``backend`` (k = 10); also returns the rows found."""
    backend.search(queries[:1], 10)  # warm-up (pages in, allocations)
    lat = []
    for i in range(n_single):
        t = time.perf_counter()
        backend.search(queries[i : i + 1], 10)
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    _, rows = backend.search(queries[:batch], 10)
    batch_s = time.perf_counter() - t
    return {
        "p50_ms": round(percentile_ms(lat, 50), 3),
        "p99_ms": round(percentile_ms(lat, 99), 3),
        "batch_qps": round(batch / batch_s, 1),
        "rows": rows,
    }


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_size(n: int, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    rng = np.random.default_rng(n)
    centres = rng.standard_normal((max(1, int(math.sqrt(n))), args.dim), dtype=np.float32)
    queries = clustered(max(args.queries, args.batch), args.dim, centres, rng)
    folder = work / f"n{n}"
    folder.mkdir(parents=True, exist_ok=True)

    results = []
    rss0 = rss_bytes()
    t = time.perf_counter()
    names = []
    for s, a in enumerate(range(0, n, SHARD)):
        block = clustered(min(SHARD, n - a), args.dim, centres, rng)
        name = folder / f"emb-{s:05d}.npy"
        atomic_write(name, lambda f, block=block: np.save(f, block, allow_pickle=False))
        names.append(name)
        del block
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    shards = [np.load(p, mmap_mode="c") for p in names]
    exact = ExactBackend(shards, args.dim)
    open_s = time.perf_counter() - t
    timing = time_backend(exact, queries, args.queries, args.batch)
    truth = timing.pop("rows")
    results.append({
        "n": n, "backend": "exact", "params": "", "build_s": round(open_s, 3),
        "note": f"shards written in {gen_s:.1f}s (data generation included)",
        "rss_mb": round((rss_bytes() - rss0) / 2**20, 1), "disk_mb": round(dir_bytes(folder) / 2**20, 1),
        "recall_at_10": 1.0, **timing,
    })  # fmt: skip
    print(_row(results[-1]), flush=True)

    for name in args.backends:
        if name == "exact":
            continue
        if name == "auto":
            results.append(bench_auto(n, args, folder, queries, truth))
            print(_row(results[-1]), flush=True)
            continue
        factory = f"IVF{int(4 * math.sqrt(n))},Flat" if name == "ivf" else "HNSW32" if name == "hnsw" else name
        params = default_search_params(factory)
        rss0 = rss_bytes()
        t = time.perf_counter()
        fb = FaissBackend.build(shards, factory, params)
        path = fb.save(folder / f"{name}.index")
        build_s = time.perf_counter() - t
        timing = time_backend(fb, queries, args.queries, args.batch)
        rows = timing.pop("rows")
        results.append({
            "n": n, "backend": f"faiss:{factory}", "params": params, "build_s": round(build_s, 3), "note": "",
            "rss_mb": round((rss_bytes() - rss0) / 2**20, 1), "disk_mb": round(path.stat().st_size / 2**20, 1),
            "recall_at_10": round(recall_at_k(truth, rows, 10), 4), **timing,
        })  # fmt: skip
        print(_row(results[-1]), flush=True)
        del fb
    del exact, shards
    shutil.rmtree(folder, ignore_errors=True)
    return results


def _child(args: argparse.Namespace, what: str, folder: Path) -> dict[str, Any]:
    """Run this script's ``--child-build`` or ``--child-search`` on ``folder`` in a fresh process; its JSON."""
    cmd = [sys.executable, __file__, f"--child-{what}", str(folder), "--dim", str(args.dim), "--threads", str(args.threads),
           "--max-index-memory", args.max_index_memory, "--min-recall", str(args.min_recall), "--queries", str(args.queries),
           "--batch", str(args.batch)]  # fmt: skip
    subprocess.run(cmd, check=True)
    return json.loads((folder / f"auto-{what}.json").read_text())


def bench_auto(n: int, args: argparse.Namespace, folder: Path, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The ``faiss:auto`` row: built in one subprocess, searched in another (each reports its peak RSS)."""
    np.save(folder / "queries.npy", queries)
    built = _child(args, "build", folder)
    searched = _child(args, "search", folder)
    rows = np.load(folder / "auto-rows.npy")
    entry = built["entry"]
    return {
        "n": n, "backend": f"faiss:auto {entry['factory']}", "params": f"{entry['search_params']} rerank={entry['rerank']}",
        "build_s": built["build_s"], "note": f"budget {args.max_index_memory}, min recall {args.min_recall}",
        "rss_mb": searched["peak_rss_mb"], "peak_rss_build_mb": built["peak_rss_mb"], "peak_rss_search_mb": searched["peak_rss_mb"],
        "baseline_rss_mb": built["baseline_rss_mb"], "disk_mb": round((folder / "auto.index").stat().st_size / 2**20, 1),
        "recall_at_10": round(recall_at_k(truth, rows, 10), 4), "recall_recorded": entry["recall"]["recall_at_10"],
        **{k: searched[k] for k in ("p50_ms", "p99_ms", "batch_qps")}, "auto": entry["auto"],
    }  # fmt: skip


def _shards(folder: Path) -> list[np.ndarray]:
    return [np.load(p, mmap_mode="c") for p in sorted(folder.glob("emb-*.npy"))]


def child_build(folder: Path, args: argparse.Namespace) -> None:
    """``--child-build``: choose and build the ``faiss:auto`` index of the shards in ``folder``."""
    from vsekit.index.budget import auto_settings, build_auto

    base = rss_bytes()
    t = time.perf_counter()
    entry = build_auto(_shards(folder), args.dim, auto_settings(args.max_index_memory, args.min_recall, 1000), folder / "auto.index")
    out = {"entry": entry, "build_s": round(time.perf_counter() - t, 3), "baseline_rss_mb": round(base / 2**20, 1),
           "peak_rss_mb": round(rss_bytes("VmHWM") / 2**20, 1)}  # fmt: skip
    atomic_write_json(out, folder / "auto-build.json")


def child_search(folder: Path, args: argparse.Namespace) -> None:
    """``--child-search``: open the ``faiss:auto`` index as ``Index.load`` does and time it."""
    from vsekit.index.rows import RerankedBackend, ShardRows

    entry = json.loads((folder / "auto-build.json").read_text())["entry"]
    shards = _shards(folder)
    backend: Any = FaissBackend.load(folder / "auto.index", entry["factory"], entry["search_params"])
    if entry["rerank"]:
        backend = RerankedBackend(backend, ShardRows(shards, args.dim), entry["rerank"])
    timing = time_backend(backend, np.load(folder / "queries.npy"), args.queries, args.batch)
    np.save(folder / "auto-rows.npy", timing.pop("rows"))
    atomic_write_json({**timing, "peak_rss_mb": round(rss_bytes("VmHWM") / 2**20, 1)}, folder / "auto-search.json")


HEADER = (
    f"{'N':>9}  {'backend':<30} {'params':<22} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch q/s':>10} "
    f"{'recall@10':>9} {'RSS MB':>8} {'disk MB':>8}"
)


def _row(r: dict[str, Any]) -> str:
    return (
        f"{r['n']:>9,}  {r['backend']:<30} {r['params']:<22} {r['build_s']:>8.2f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
        f"{r['batch_qps']:>10,.0f} {r['recall_at_10']:>9.3f} {r['rss_mb']:>8.0f} {r['disk_mb']:>8.0f}"
        + (f"  (peak RSS: build {r['peak_rss_build_mb']:.0f} MB, search {r['peak_rss_search_mb']:.0f} MB)" if "peak_rss_build_mb" in r else "")
    )


def _threads(n: int) -> bool:
    """Use ``n`` threads in torch and FAISS; False if FAISS is not installed."""
    torch.set_num_threads(n)
    try:
        import faiss
    except ImportError:
        return False
    faiss.omp_set_num_threads(n)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000", help="comma-separated collection sizes")
    p.add_argument("--full", action="store_true", help="also 1,000,000 (needs ~12 GB of RAM and disk; outside CI)")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--queries", type=int, default=200, help="single queries timed per backend")
    p.add_argument("--batch", type=int, default=1000, help="queries in the throughput batch")
    p.add_argument("--threads", type=int, default=1, help="torch and FAISS threads")
    p.add_argument("--backends", default="exact,ivf,hnsw", help="exact, ivf, hnsw, auto or FAISS factory strings")
    p.add_argument("--max-index-memory", default="2GB", help="the budget of the auto backend")
    p.add_argument("--min-recall", type=float, default=0.9, help="the recall@10 target of the auto backend")
    p.add_argument("--out", default="benchmarks/results/bench_search.json")
    p.add_argument("--workdir", help="where the shards are written (default: a temporary folder)")
    p.add_argument("--child-build", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-search", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_build or args.child_search:
        _threads(args.threads)
        (child_build if args.child_build else child_search)(args.child_build or args.child_search, args)
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()] + ([1_000_000] if args.full else [])
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not _threads(args.threads):
        if any(b != "exact" for b in args.backends):
            print("faiss is not installed (pip install 'vsekit[faiss]'): exact backend only", file=sys.stderr)
        args.backends = ["exact"]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-search-"))
    print(HEADER)
    results = []
    try:
        for n in sizes:
            results.extend(bench_size(n, args, work))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    payload = {
        "dim": args.dim, "k": 10, "threads": args.threads, "single_queries": args.queries, "batch": args.batch,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch": torch.__version__, "numpy": np.__version__},
        "results": results,
    }  # fmt: skip
    atomic_write_json(payload, args.out)
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
