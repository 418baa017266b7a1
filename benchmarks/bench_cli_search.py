"""How fast ``vsekit search`` answers: cold commands, a warm server, and a file of many queries, side by side.

Setup (in ``--work``, reused when present): an exact index of ``--items`` generated captions (2-4 phrases about
aerial scenes, all different) embedded by ``--model`` (default: the ready model ``rsicd-aerial``, whose text
encoder is MiniLM-L6, so every text query runs a real sentence encoder). Text queries are other generated
sentences; the index is searched text→text, which costs what text→image costs on an index of that size.

Rows (each a median over ``--repeats`` rounds, the rows interleaved within every round):

* ``python -c "import torch"``: the floor of any command that uses torch (interpreter + torch);
* ``vsekit search INDEX --item ID``: a cold search by an indexed item (no model is loaded);
* ``vsekit search INDEX --text ...``: a cold text query (the model is loaded: checkpoint, MiniLM);
* ``vsekit search --server URL --text ...``: a cold command that asks a running ``vsekit serve``;
* warm server: ``--server-queries`` text queries one after another through :class:`vsekit.serving.SearchClient`
  against ``vsekit serve`` (its own process): p50 / p99 in milliseconds;
* ``vsekit search INDEX --queries FILE`` with ``--file-queries`` text queries: wall time and queries/s of the
  whole command (start-up and model loading included), and the rate of answering alone (the command's wall
  time less the cold text query's).

Goals (issue 23): cold ``--item`` within 1.5× of ``import torch``; warm p50 ≤ 50 ms; ≥ 100 queries/s for a
1,000-query file. Results print as a table and go to ``--out`` (JSON, written atomically).

Usage:
    python benchmarks/bench_cli_search.py [--items 10000] [--repeats 5] [--model rsicd-aerial]
                                          [--work runs/bench_cli_search] [--out benchmarks/results/bench_cli_search.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

SUBJECTS = ["a parking lot", "a baseball field", "a river", "a bridge", "an airport", "a farmland", "a forest",
            "a playground", "a church", "a stadium", "a harbor", "a railway station", "a pond", "a school",
            "a resort", "a desert", "a beach", "a meadow", "a mountain", "a square", "an industrial area"]  # fmt: skip
DETAILS = ["with many cars", "next to green trees", "surrounded by buildings", "near a road", "beside the sea",
           "with white roofs", "crossed by a highway", "with a pool", "in a dense residential area", "with boats",
           "between two lakes", "with a red track", "on a hill", "with bare land around", "with several storage tanks"]  # fmt: skip


def sentences(n: int, seed: int) -> list[str]:
    """``n`` different generated captions."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        parts = [rng.choice(SUBJECTS)] + rng.sample(DETAILS, rng.randint(1, 3))
        out.setdefault(" ".join(parts) + f" {rng.randint(0, 99)}", None)
    return list(out)


def vsekit(*args: str) -> list[str]:
    return [sys.executable, "-m", "vsekit", *args]


def run(cmd: list[str]) -> float:
    """Wall seconds of a command that must succeed."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return seconds


def build(work: Path, items: int, model: str) -> Path:
    """The index of ``items`` generated captions (reused when it is there)."""
    index = work / f"index_{items}"
    if (index / "index.json").is_file():
        return index
    work.mkdir(parents=True, exist_ok=True)
    table = work / f"captions_{items}.jsonl"
    table.write_text("".join(json.dumps({"caption": s}) + "\n" for s in sentences(items, seed=0)), encoding="utf-8")
    print(f"building {index} ({items} captions, model {model}) ...", flush=True)
    run(vsekit("encode", model, str(table), "--out", str(index), "--quiet"))
    return index


def start_server(index: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(vsekit("serve", str(index), "--port", "0"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    match = re.search(r"at (http://\S+?)/ ", proc.stdout.readline())
    if not match:
        proc.kill()
        raise SystemExit(f"vsekit serve did not start: {proc.stderr.read()[-2000:]}")
    return proc, match.group(1)


def warm_latencies(url: str, queries: list[str]) -> list[float]:
    from vsekit.serving import SearchClient

    client = SearchClient(url)
    client.search(text=queries[0], target="text")  # the first query warms the process up
    out = []
    for q in queries:
        start = time.perf_counter()
        client.search(text=q, k=10, target="text")
        out.append(time.perf_counter() - start)
    return out


def cold_rows(index: Path, url: str, item: str, query: str, qfile: Path, repeats: int) -> dict[str, list[float]]:
    """Wall seconds of every cold command, interleaved round by round."""
    commands = {
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "search --item": vsekit("search", str(index), "--item", item, "--target", "text"),
        "search --text": vsekit("search", str(index), "--text", query, "--target", "text"),
        "search --server --text": vsekit("search", "--server", url, "--text", query, "--target", "text"),
        "search --queries FILE": vsekit("search", str(index), "--queries", str(qfile), "--target", "text"),
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():
            times[name].append(run(cmd))
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=10000)
    p.add_argument("--model", default="rsicd-aerial")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--server-queries", type=int, default=200)
    p.add_argument("--file-queries", type=int, default=1000)
    p.add_argument("--work", default="runs/bench_cli_search")
    p.add_argument("--out", default="benchmarks/results/bench_cli_search.json")
    args = p.parse_args(argv)
    from vsekit.io import atomic_write_json

    work = Path(args.work)
    index = build(work, args.items, args.model)
    qfile = work / f"queries_{args.file_queries}.txt"
    queries = sentences(max(args.file_queries, args.server_queries), seed=1)
    qfile.write_text("\n".join(queries[: args.file_queries]) + "\n", encoding="utf-8")
    item = json.loads(run_json(vsekit("search", str(index), "--text", queries[0], "--target", "text", "-k", "1", "--json")))[0]["id"]
    server, url = start_server(index)
    try:
        warm = warm_latencies(url, queries[: args.server_queries])
        cold = cold_rows(index, url, item, queries[1], qfile, args.repeats)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    result = summarize(cold, warm, args)
    print_table(result)
    atomic_write_json(result, args.out)
    print(f"wrote {args.out}")
    return 0


def run_json(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def summarize(cold: dict[str, list[float]], warm: list[float], args: argparse.Namespace) -> dict:
    med = {name: statistics.median(v) for name, v in cold.items()}
    warm_ms = sorted(1000 * s for s in warm)
    file_s = med["search --queries FILE"]
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "items": args.items, "model": args.model, "repeats": args.repeats,
        "cold_seconds_median": {k: round(v, 3) for k, v in med.items()},
        "cold_seconds_all": {k: [round(x, 3) for x in v] for k, v in cold.items()},
        "item_over_import_torch": round(med["search --item"] / med["python -c 'import torch'"], 3),
        "warm_server_ms": {"queries": len(warm_ms), "p50": round(statistics.median(warm_ms), 2),
                           "p99": round(warm_ms[min(len(warm_ms) - 1, int(0.99 * len(warm_ms)))], 2)},
        "queries_file": {"queries": args.file_queries, "seconds": round(file_s, 3),
                         "queries_per_second": round(args.file_queries / file_s, 1),
                         "answering_queries_per_second": round(args.file_queries / max(file_s - med["search --text"], 1e-9), 1)},
    }  # fmt: skip


def print_table(r: dict) -> None:
    med = r["cold_seconds_median"]
    print(f"\nvsekit search on a {r['items']}-item exact index, model {r['model']} (medians of {r['repeats']} rounds)")
    print(f"{'what':<34} {'result':>12}")
    for name, seconds in med.items():
        print(f"{name:<34} {seconds:>10.2f} s")
    print(f"{'--item / import torch':<34} {r['item_over_import_torch']:>11.2f}x  (goal <= 1.5x)")
    w = r["warm_server_ms"]
    print(f"{'warm server p50 / p99':<34} {w['p50']:>6.1f} / {w['p99']:.1f} ms  (goal p50 <= 50 ms)")
    f = r["queries_file"]
    print(f"{'--queries file, whole command':<34} {f['queries_per_second']:>8.1f} q/s  ({f['queries']} queries in {f['seconds']:.1f} s; goal >= 100)")
    print(f"{'--queries file, answering alone':<34} {f['answering_queries_per_second']:>8.1f} q/s")


if __name__ == "__main__":
    sys.exit(main())
