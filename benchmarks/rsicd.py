"""RSICD image-text retrieval benchmark: extract features once, train the recipes, report against the
published results.

    python benchmarks/rsicd.py ../shared/datasets/rsicd                   # all recipes
    python benchmarks/rsicd.py ../shared/datasets/rsicd --recipes gpo_bigru,mean_bigru --epochs 2

For each recipe: train on ``train`` with model selection on ``val`` only, then evaluate ``test`` once with
the selected checkpoint. Writes to ``--out`` (default ``benchmarks/results/rsicd``):

    results.json      every recipe's config overrides, val history, test metrics, mR, wall times
    table.md          our rows next to the published rows of the dataset README
    val_mr.png        validation mR per epoch for each recipe
    recall_at_k.png   test R@K for K = 1..50, both directions
    retrievals.png    the recipe with the best validation mR: top-5 test images for 8 test captions

Wall time is reported per recipe, split into feature extraction (shared by the feature-based recipes,
done once) and training. Runs are resumable: a killed benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vsekit.config import load_config
from vsekit.data.factory import build_dataset
from vsekit.errors import VsekitError
from vsekit.evaluation import evaluate_sims, mean_recall, recall_curve
from vsekit.evaluation.retrieval import similarity_matrix
from vsekit.extract import extract_features
from vsekit.io import atomic_write_json, atomic_write_text
from vsekit.plots import plot_recall_curves
from vsekit.training import train

# Shared settings of the feature-based recipes: EfficientNet-Lite0 grids (49 × 1280) through the VSE∞
# region encoder (fc + residual MLP, GPO), per-sample grid size augmentation.
FEATURES = [
    "data.kind=karpathy",
    "data.val_split=val",
    "data.test_split=test",
    "data.val_max_images=null",
    "data.vocab_min_count=2",
    "model.image.kind=precomp",
    "model.image.img_dim=1280",
    "model.image.mlp=true",
    "model.image.size_augment=0.2",
    "model.image.size_augment_mode=grid",
    "model.embed_size=512",
    "eval_protocol=kcaptions",
    "batch_size=128",
]
BIGRU_GLOVE = ["model.text.kind=bigru", "model.text.word_dim=50", "model.text.word_vectors=glove-6b-50d"]

# name -> (preset, overrides, description)
RECIPES: dict[str, tuple[str, list[str], str]] = {
    "gpo_bigru": (
        "vse_infty_region_bigru",
        [*FEATURES, *BIGRU_GLOVE, "model.image.pooling=gpo", "model.text.pooling=gpo", "loss.negatives=sum",
         "loss.warmup_epochs=0", "epochs=8", "optim.lr_decay_epochs=[6]"],
        "VSE∞: GPO on both sides, BiGRU (GloVe init), sum of hinges",
    ),
    "mean_bigru": (
        "vse_infty_region_bigru",
        [*FEATURES, *BIGRU_GLOVE, "model.image.pooling=mean", "model.text.pooling=mean", "loss.negatives=sum",
         "loss.warmup_epochs=0", "epochs=8", "optim.lr_decay_epochs=[6]"],
        "pooling ablation: mean on both sides",
    ),
    "max_bigru": (
        "vse_infty_region_bigru",
        [*FEATURES, *BIGRU_GLOVE, "model.image.pooling=max", "model.text.pooling=max", "loss.negatives=sum",
         "loss.warmup_epochs=0", "epochs=8", "optim.lr_decay_epochs=[6]"],
        "pooling ablation: max on both sides",
    ),
    "vsepp_mean_hardest": (
        "vse_infty_region_bigru",
        [*FEATURES, *BIGRU_GLOVE, "model.image.pooling=mean", "model.text.pooling=mean", "loss.negatives=hardest",
         "loss.warmup_epochs=0", "epochs=8", "optim.lr_decay_epochs=[6]"],
        "VSE++ baseline: mean pooling, hardest negatives",
    ),
}  # fmt: skip

PUBLISHED_ROW = re.compile(r"^\|\s*([^|]+?)\s*\|" + r"\s*([\d.]+)\s*\|" * 7 + r"\s*$")


def published_rows(readme: Path) -> dict[str, list[float]]:
    """The published results table of the dataset README: method -> [6 recalls, mR]."""
    rows = {}
    if readme.is_file():
        for line in readme.read_text(encoding="utf-8").splitlines():
            m = PUBLISHED_ROW.match(line)
            if m:
                rows[m.group(1)] = [float(x) for x in m.groups()[1:]]
    return rows


def markdown_table(ours: dict[str, dict[str, Any]], published: dict[str, list[float]]) -> str:
    head = "| method | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | mR |\n|---|---|---|---|---|---|---|---|\n"
    lines = [f"| {name} (published) | " + " | ".join(f"{v:.2f}" for v in vals) + " |" for name, vals in published.items()]
    for name, r in ours.items():
        m = r["test"]
        vals = [m[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)] + [r["test_mR"]]
        lines.append(f"| **vsekit {name}** | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    return head + "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(args.data)
    ann, images = data / "dataset_rsicd.json", data / "images"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    feats = out / "features_lite0"
    t0 = time.perf_counter()
    meta = extract_features(ann, images, feats, splits=["train", "val", "test"], progress_stream=sys.stderr)
    extract_s = round(time.perf_counter() - t0, 1)
    spent = sum(t.get("seconds", 0.0) for t in meta["timing"].values())
    print(f"features: {feats} ({extract_s:.0f}s now; extraction time recorded per split: {meta['timing']})")

    names = [n for n in args.recipes.split(",") if n] if args.recipes else list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise VsekitError(f"--recipes: unknown recipe {unknown[0]!r} (known: {', '.join(RECIPES)})")
    results_path = out / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text())["recipes"] if results_path.is_file() else {}
    for name in names:
        preset, overrides, desc = RECIPES[name]
        extra = [f"data.path={ann}", f"data.features={feats}", f"seed={args.seed}", *args.overrides]
        if args.epochs:
            extra.append(f"epochs={args.epochs}")
        cfg = load_config(preset=preset, overrides=[*overrides, *extra])
        t1 = time.perf_counter()
        res = train(cfg, out / "runs" / f"{name}_seed{args.seed}", log=print, progress_stream=sys.stderr)
        train_s = round(time.perf_counter() - t1, 1)
        test = build_dataset(cfg.data, cfg.data.test_split)
        sims = similarity_matrix(res.model, test, cfg.eval_batch_size)
        np.save(out / "runs" / f"{name}_seed{args.seed}" / "test_sims.npy", sims)
        metrics = evaluate_sims(sims, test.captions_per_image)
        curve = recall_curve(sims, test.captions_per_image, max_k=50)
        results[name] = {
            "description": desc,
            "preset": preset,
            "overrides": [*overrides, *extra],
            "val_history": [{"epoch": r["epoch"], "val_mR": r["val_rsum"] / 6.0} for r in res.history],
            "best_epoch": res.best_epoch,
            "test": metrics,
            "test_mR": mean_recall(metrics),
            "recall_at_k": {k: v.tolist() for k, v in curve.items()},
            "train_seconds_this_call": train_s,
            "train_seconds_total": round(sum(r.get("train_seconds", 0) + r.get("val_seconds", 0) for r in res.history), 1),
            "extract_seconds": round(spent, 1),
        }
        print(f"{name}: test mR {results[name]['test_mR']:.2f} (rsum {metrics['rsum']:.1f}), training {train_s:.0f}s")
        atomic_write_json({"dataset": str(data), "features": meta | {"splits": {}}, "recipes": results}, results_path)
    table = markdown_table(results, published_rows(data / "README.md"))
    atomic_write_text(table, out / "table.md")
    _plots(results, out)
    best = max(results, key=lambda n: max(h["val_mR"] for h in results[n]["val_history"]))
    _retrievals(best, out / "runs" / f"{best}_seed{args.seed}" / "test_sims.npy", ann, images, out / "retrievals.png")
    print(table)
    return results


def _plots(results: dict[str, Any], out: Path) -> None:
    import numpy as np

    from vsekit.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, r in results.items():
        ax.plot([h["epoch"] for h in r["val_history"]], [h["val_mR"] for h in r["val_history"]], marker="o", ms=3, label=name)
    ax.set(xlabel="epoch", ylabel="validation mR", title="RSICD validation mR per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, out / "val_mr.png")
    curves = {n: {k: np.asarray(v) for k, v in r["recall_at_k"].items()} for n, r in results.items()}
    plot_recall_curves(curves, out / "recall_at_k.png", title="RSICD test")


def _retrievals(name: str, sims_path: Path, ann: Path, images: Path, path: Path, queries: int = 8, top: int = 5) -> None:
    """Top-``top`` test images for ``queries`` test captions spread over the split (one per image)."""
    from vsekit.data.datasets import KarpathyJSON
    from vsekit.plots import plot_retrievals

    records = KarpathyJSON(ann).records("test")
    sims = np.load(sims_path)
    k = sims.shape[1] // sims.shape[0]
    picks = np.linspace(0, sims.shape[0] - 1, queries).astype(int)
    texts, rows = [], []
    for i in picks:
        column = sims[:, i * k]  # the first caption of image i
        order = np.argsort(-column, kind="stable")[:top]
        texts.append(records[i].captions[0])
        rows.append([(images / records[j].filepath / records[j].filename, float(column[j]), j == i) for j in order])
    plot_retrievals(texts, rows, path, title=f"RSICD test: text -> image with {name} (green: the captioned image)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="the RSICD folder (dataset_rsicd.json, images/, README.md)")
    p.add_argument("--out", default="benchmarks/results/rsicd")
    p.add_argument("--recipes", help=f"comma-separated subset of: {', '.join(RECIPES)}")
    p.add_argument("--epochs", type=int, help="override every recipe's epochs (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every recipe")
    args = p.parse_intermixed_args(argv)
    try:
        run(args)
    except VsekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
