"""The three papers' own recipes on RSICD: VSE++ against VSE0, Dual-Path's instance loss and text CNN.

Trains each row's preset on extracted Lite0 features (model selection on val), evaluates the selected checkpoint
once on test, and writes a table beside the published VSE++ row, the rows as JSON, and the validation curves:

    python benchmarks/rsicd_papers.py ../shared/datasets/rsicd/dataset_rsicd.json FEATURES \\
        --out benchmarks/results/rsicd_papers [--pooled] [--device cuda --jobs 6]

FEATURES is a ``vsekit extract`` folder. Every recipe here reads one global vector per image (the mean of the grid
cells -> fc, no MLP, no set-size augmentation), so ``--pooled`` first averages the cells into a 1-cell copy of the
folder: the same model (fc is linear, so fc of the mean equals the mean of fc), 49 times less data to read, and
small enough to carry to a GPU machine. Runs resume when killed; finished rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# name, preset, overrides, the row whose best checkpoint it starts from
ROWS = [
    ("vsepp", "rsicd_vsepp_paper", [], None),
    ("vsepp_same_text", "rsicd_vsepp_paper", ["loss.same_text_positives=true"], None),
    ("vse0", "rsicd_vse0_paper", [], None),
    ("dualpath_rank", "rsicd_dualpath_rank", [], None),
    ("dualpath_rank_bigru", "rsicd_dualpath_rank", ["model.text.kind=bigru", "model.text.dropout=0.0"], None),
    ("dualpath_stage1", "rsicd_dualpath_stage1", [], None),
    ("dualpath_stage2", "rsicd_dualpath_stage2", [], "dualpath_stage1"),
]
PUBLISHED = {"VSE++ (published; GaLR's Table I)": [3.38, 9.51, 17.46, 2.82, 11.32, 18.10]}
RECALLS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]


def pool_features(src: Path, dst: Path) -> Path:
    """A copy of a features folder with every image's grid cells averaged into one (float32 mean, float16 store)."""
    if (dst / "features.json").is_file():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    meta = json.loads((src / "features.json").read_text())
    for split, entry in meta["splits"].items():
        cells = np.load(src / f"{split}_ims.npy", mmap_mode="r")
        pooled = [cells[i : i + 512].astype(np.float32).mean(1, keepdims=True) for i in range(0, len(cells), 512)]
        np.save(dst / f"{split}_ims.npy", np.concatenate(pooled).astype(np.float16))
        entry["grid"] = 1
        entry.pop("views", None)
    (dst / "features.json").write_text(json.dumps(meta))
    return dst


def run_row(row: tuple, args: argparse.Namespace, features: Path, runs: Path) -> None:
    name, preset, overrides, parent = row
    run = runs / name
    test = runs / f"{name}.test.json"
    if test.is_file():
        return
    extra = [f"init_from={runs / parent / 'best.pt'}"] if parent else []
    cmd = [sys.executable, "-m", "vsekit", "train", "--preset", preset, "--run-dir", str(run), "--quiet",
           f"data.path={args.annotations}", f"data.features={features}", f"device={args.device}", *overrides, *extra,
           *args.override]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"{name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
    subprocess.run([sys.executable, "-m", "vsekit", "eval", str(run), "--split", "test", "--device", args.device,
                    "--json", str(test)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip


def collect(runs: Path) -> list[dict]:
    rows = []
    for name, preset, overrides, parent in ROWS:
        if not (runs / f"{name}.test.json").is_file():
            continue
        test = json.loads((runs / f"{name}.test.json").read_text())
        history = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
        best = max(history, key=lambda r: r["val_rsum"])
        seconds = sum(r.get("train_seconds", 0) + r.get("val_seconds", 0) for r in history)
        rows.append({"name": name, "preset": preset, "overrides": overrides, "init_from": parent,
                     "test": {k: test[k] for k in RECALLS}, "test_mr": sum(test[k] for k in RECALLS) / 6,
                     "val_mr": best["val_rsum"] / 6, "best_epoch": best["epoch"], "epochs": len(history),
                     "val_mr_curve": [r["val_rsum"] / 6 for r in history], "seconds": round(seconds, 1)})  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    head = "| row | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | mR | val mR (epoch) | time |\n" + "|---" * 10 + "|\n"
    lines = [f"| {name} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {sum(vals) / 6:.2f} | | |"
             for name, vals in PUBLISHED.items()]  # fmt: skip
    for r in rows:
        recalls = " | ".join(f"{r['test'][k]:.2f}" for k in RECALLS)
        lines.append(f"| {r['name']} | {recalls} | **{r['test_mr']:.2f}** | {r['val_mr']:.2f} ({r['best_epoch']}/{r['epochs']}) "
                     f"| {r['seconds'] / 60:.1f} min |")  # fmt: skip
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        start = 5 if r["init_from"] else 0  # stage II continues stage I's epochs
        ax.plot(range(start + 1, start + 1 + len(r["val_mr_curve"])), r["val_mr_curve"], marker="o", ms=3, label=r["name"])
    ax.axhline(10.43, color="grey", ls=":", label="VSE++ published (test)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mR")
    ax.set_title("RSICD: the papers' recipes, validation mR per epoch")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("annotations", help="dataset_rsicd.json")
    p.add_argument("features", type=Path, help="a 'vsekit extract' folder of the dataset")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/rsicd_papers"))
    p.add_argument("--pooled", action="store_true", help="train on a 1-cell (mean-pooled) copy of the features")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1, help="rows trained at once (a GPU takes several)")
    p.add_argument("--collect", action="store_true", help="only report the finished rows under --out/runs")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="appended to every row's config (e.g. a smaller model for a quick check)")
    args = p.parse_args(argv)
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    if not args.collect:
        features = pool_features(args.features, args.out / "features_pooled") if args.pooled else args.features
        first = [r for r in ROWS if r[3] is None]
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(lambda r: run_row(r, args, features, runs), first))
        for row in ROWS:
            if row[3] is not None:
                run_row(row, args, features, runs)
    rows = collect(runs)
    (args.out / "table.md").write_text(table(rows))
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "val_mr.png")
    print(table(rows))
    print(f"wrote {args.out}/table.md, results.json, val_mr.png ({os.cpu_count()} CPUs, device {args.device})")


if __name__ == "__main__":
    main()
