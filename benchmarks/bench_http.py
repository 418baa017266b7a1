"""HTTP end-to-end latency of ``vsekit serve`` under concurrent clients.

Setup (in ``--work``, reused when present):

* a real model: a 1024-d ``demo_gpo`` model (BiGRU text encoder, region-feature image encoder) trained for
  one epoch on the built-in synthetic data, so every query runs a real text encoder;
* a real index of ``--items`` images and two captions each: random region features (``N×4×64``, written
  as a precomputed-features collection) and random 2-4 word captions embedded by that model with
  ``Index.build`` (exact backend), i.e. ``--items`` 1024-d image embeddings.

Load: ``vsekit serve`` runs in a subprocess (on 127.0.0.1, its own process and cores); ``--clients``
threads of this process each send text→image queries (k=10, random 3-8 word sentences from the
vocabulary) with :class:`vsekit.serving.SearchClient` (urllib, one connection per request) back to back
for ``--seconds``. Every request must succeed (any error fails the run). Reported: requests/s and
client-side p50/p90/p99/max latency of whole HTTP requests, plus the service's own query latency from
``/api/stats``. Results go to ``--out`` (JSON, written atomically).

Usage:
    python benchmarks/bench_http.py [--items 10000 --clients 16 --seconds 30 --work runs/bench_http
                                     --out benchmarks/results/bench_http.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def build(work: Path, items: int) -> Path:
    """Train the model and build the index (once); returns the index folder."""
    from vsekit.config import apply_overrides
    from vsekit.data import write_precomp
    from vsekit.index import Index
    from vsekit.presets import get_preset
    from vsekit.training import train

    index_dir = work / f"index_{items}"
    if (index_dir / "index.json").is_file():
        return index_dir
    run = work / "model"
    if not (run / "best.pt").is_file():
        cfg = apply_overrides(get_preset("demo_gpo"), [
            "model.embed_size=1024", "model.text.word_dim=32", "data.synthetic={num_train: 100, num_val: 20, num_test: 0}",
            "batch_size=50", "epochs=1",
        ])  # fmt: skip
        train(cfg, run, log=print, progress_stream=None)
    rng = np.random.default_rng(0)
    words = [w for w in _vocabulary() if w.isalpha()]
    # two captions per image (with one, the layout would read as one feature row per caption)
    captions = [" ".join(rng.choice(words, size=rng.integers(2, 5))) for _ in range(2 * items)]
    write_precomp(work / "collection", "test", rng.normal(size=(items, 4, 64)).astype(np.float16), captions)
    Index.build(run / "best.pt", work / "collection", index_dir, progress=True, batch_size=256)
    return index_dir


def _vocabulary() -> list[str]:
    from vsekit.data.synthetic import COLORS, NOUNS

    return [*COLORS, *(n for pair in NOUNS for n in pair), "small", "large", "a", "two", "three", "with", "and", "near"]


def start_server(index_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vsekit", "serve", str(index_dir), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    line = proc.stdout.readline()
    match = re.search(r"at (http://\S+?)/ ", line)
    if not match:
        proc.kill()
        sys.exit(f"the server did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, match.group(1)


def load(url: str, clients: int, seconds: float, seed: int = 0) -> dict:
    """``clients`` threads querying back to back for ``seconds``; returns latencies and errors."""
    from vsekit.serving import SearchClient

    words = _vocabulary()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    stop = time.perf_counter() + seconds
    start_line = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        rng = random.Random(seed + i)
        client = SearchClient(url, timeout=60)
        start_line.wait()
        while time.perf_counter() < stop:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 8)))
            t0 = time.perf_counter()
            try:
                hits = client.search(text=text, k=10)
                if len(hits) != 10:
                    raise RuntimeError(f"{len(hits)} hits")
            except Exception as exc:  # noqa: BLE001 - every failure counts: the run requires zero
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start_line.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array([x for per in latencies for x in per]) * 1000.0
    return {"requests": len(lat), "errors": len(errors), "error_examples": errors[:5], "wall_seconds": round(wall, 2),
            "requests_per_second": round(len(lat) / wall, 1),
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 2), "p90": round(float(np.percentile(lat, 90)), 2),
                           "p99": round(float(np.percentile(lat, 99)), 2), "max": round(float(lat.max()), 2),
                           "mean": round(float(lat.mean()), 2)}}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=10_000, help="indexed images (default 10000)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--seconds", type=float, default=30.0, help="load duration (default 30)")
    p.add_argument("--work", default="runs/bench_http", help="model and index folder (reused)")
    p.add_argument("--out", default="benchmarks/results/bench_http.json")
    args = p.parse_args()

    from vsekit.io import atomic_write_json
    from vsekit.serving import SearchClient, ServiceError

    index_dir = build(Path(args.work), args.items)
    proc, url = start_server(index_dir)
    try:
        client = SearchClient(url)
        for _ in range(300):
            try:
                client.health()
                break
            except ServiceError:
                time.sleep(0.1)
        for _ in range(20):  # warm-up
            client.search(text="a red car", k=10)
        result = load(url, args.clients, args.seconds)
        stats = client.stats()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    import torch

    report = {
        "items": args.items, "dim": stats["index"]["dim"], "backend": stats["backend"], "clients": args.clients,
        "seconds": args.seconds, "query": "text -> image, k=10", **result,
        "service_query_latency_ms": stats["latency_ms"],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version()},
    }  # fmt: skip
    atomic_write_json(report, args.out)
    lat, svc = result["latency_ms"], stats["latency_ms"]
    print(f"\nHTTP load: {args.clients} clients, {result['wall_seconds']:.0f}s, {args.items} items × {report['dim']}-d, {stats['backend']} search")
    print(f"{'requests':>9} {'errors':>7} {'req/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{result['requests']:>9} {result['errors']:>7} {result['requests_per_second']:>7.1f} {lat['p50']:>8.1f} {lat['p90']:>8.1f} "
          f"{lat['p99']:>8.1f} {lat['max']:>8.1f}")  # fmt: skip
    print(f"service-side query latency (last {svc['count']}): p50 {svc['p50']:.1f} ms, p90 {svc['p90']:.1f} ms, p99 {svc['p99']:.1f} ms")
    print(f"written to {args.out}")
    if result["errors"]:
        print(f"FAILED: {result['errors']} errors, e.g. {result['error_examples']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
