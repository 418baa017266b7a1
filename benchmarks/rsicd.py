"""RSICD image-text retrieval benchmark: extract features once, train the recipes, report against the
published results.

    python benchmarks/rsicd.py ../shared/datasets/rsicd                   # the default recipes (not minilm_ft)
    python benchmarks/rsicd.py ../shared/datasets/rsicd --recipes gpo_bigru,mean_bigru --epochs 2
    python benchmarks/rsicd.py ../shared/datasets/rsicd --epochs 3 --kmax 2,5,10 --seeds 0,1,2   # the run of docs/results/rsicd.md

For each recipe: train on ``train`` with model selection on ``val`` only, then evaluate ``test`` once with
the selected checkpoint. ``kmax_bigru`` trains one run per image K of ``--kmax`` and evaluates only the K
with the best val mR. ``--seeds`` repeats the recipe with the best val mR with more seeds (mean ± std). Writes to ``--out`` (default ``benchmarks/results/rsicd``):

    results.json      every recipe's config overrides, val history, test metrics, mR, wall times, the K
                      search and the seed runs
    table.md          our rows next to the published rows of the dataset README, the K search, the seeds
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

from vsekit.configure import load_config
from vsekit.data.factory import build_dataset
from vsekit.errors import VsekitError
from vsekit.evaluation import evaluate_sims, mean_recall, recall_curve
from vsekit.evaluation.retrieval import similarity_matrix
from vsekit.data.views import VIEWS
from vsekit.extract import extract_features
from vsekit.io import atomic_write_json, atomic_write_text
from vsekit.plots import line_style, plot_recall_curves
from vsekit.training import train

_SOFTMAX = ["loss.negatives=softmax", "loss.same_image_positives=true"]


def _pool(name: str) -> list[str]:
    return [f"model.image.pooling={name}", f"model.text.pooling={name}"]


# name -> (preset, overrides, description). The presets (vsekit.presets, ``rsicd_*``) share the features (Lite0
# grids, 49 × 1280, through the VSE∞ region encoder), the text encoder (BiGRU over GloVe 50-d, except the MiniLM
# recipe), the schedule and the seed; only what the row's name says differs.
RECIPES: dict[str, tuple[str, list[str], str]] = {
    "gpo_bigru": ("rsicd_vse_infty", [], "VSE∞: GPO on both sides, BiGRU (GloVe init), sum of hinges"),
    "mean_bigru": ("rsicd_mean", [], "pooling ablation: mean on both sides"),
    "max_bigru": ("rsicd_max", [], "pooling ablation: max on both sides"),
    "vsepp_mean_hardest": ("rsicd_vsepp", [], "VSE++ baseline: mean pooling, hardest negatives (compare mean_bigru: sum)"),
    "instance_bigru": ("rsicd_instance", [], "Dual-Path instance losses (one class per training image) + ranking, GPO"),
    "softmax_bigru": ("rsicd_vse_infty", _SOFTMAX, "loss ablation: gpo_bigru with the softmax (InfoNCE) loss"),
    "minilm_ft": ("rsicd_vse_infty_minilm", [], "VSE∞ with MiniLM-L6 fine-tuned (lr ×0.1), GPO, hardest after 1 epoch"),
    "gpo_minilm_frozen": ("rsicd_minilm_frozen", [], "frozen MiniLM-L6 (cached), GPO both sides, softmax loss, wd 0.5, 5 epochs"),
    "mean_minilm_frozen": ("rsicd_minilm_frozen", _pool("mean"), "pooling ablation on gpo_minilm_frozen: mean on both sides"),
    "max_minilm_frozen": ("rsicd_minilm_frozen", _pool("max"), "pooling ablation on gpo_minilm_frozen: max on both sides"),
    "max_minilm_frozen_rot": ("rsicd_minilm_rot", [], "max_minilm_frozen trained on the 8 turns and mirrors of each image (augmentation), evaluated on their mean"),
    "max_minilm_frozen_rot_sametext": ("rsicd_minilm_rot", ["loss.same_text_positives=true"], "max_minilm_frozen_rot with captions that read the same out of each other's negatives"),
    "max_minilm_frozen_rot_drop60": ("rsicd_minilm_rot", ["model.image.size_augment=0.6"], "max_minilm_frozen_rot dropping up to 60% of the grid cells per sample (size augmentation; 20% in the preset)"),
    "max_minilm_frozen_rot_b256": ("rsicd_minilm_rot", ["batch_size=256"], "max_minilm_frozen_rot with batches of 256 pairs (128 in the preset): twice the in-batch negatives per softmax"),
    "max_minilm_frozen_rot_b512": ("rsicd_minilm_rot", ["batch_size=512"], "max_minilm_frozen_rot with batches of 512 pairs"),
    "max_minilm_frozen_rot_ema": ("rsicd_minilm_rot_ema", [], "the best recipe: max_minilm_frozen_rot validated and kept as the moving average of its weights (optim.ema_decay, about 500 steps)"),
    "max_minilm_frozen_rot_textmlp": ("rsicd_minilm_rot", ["model.text.mlp=true"], "max_minilm_frozen_rot with the VSE∞ residual MLP on the text side too (model.text.mlp)"),
}  # fmt: skip
# Run when --recipes is not given: the costly fine-tuned MiniLM recipe (about 5× the BiGRU's time per epoch here)
# only on request.
DEFAULT_RECIPES = [
    "gpo_bigru", "mean_bigru", "max_bigru", "vsepp_mean_hardest", "kmax_bigru", "instance_bigru", "softmax_bigru",
    "gpo_minilm_frozen", "mean_minilm_frozen", "max_minilm_frozen", "max_minilm_frozen_rot", "max_minilm_frozen_rot_ema",
]  # fmt: skip
# K-max pooling: the image K is searched on val (text K fixed at 2, the best text K of VSE∞'s Fig. 6 grid); only
# the selected K is evaluated on test, as ``kmax_bigru``.
KMAX = "kmax_bigru"


def kmax_run(k: int) -> str:
    """The run folder stem of the K-max candidate with image K = ``k``."""
    return f"kmax{k}_bigru"


def kmax_recipe(k: int) -> tuple[str, list[str], str]:
    return ("rsicd_kmax", [f"model.image.pooling=kmax:{k}"], f"pooling ablation: K-max, image K={k} (searched on val), text K=2")


def _schedule(epochs: int) -> list[str]:
    """``--epochs E``: the schedule at another length, the learning rate decayed for the last quarter."""
    return [f"epochs={epochs}", f"optim.lr_decay_epochs=[{max(1, round(epochs * 0.75))}]"]


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


def _row(metrics: dict[str, float], mr: float) -> str:
    """The six recalls and the mR of a table row."""
    return " | ".join(f"{v:.2f}" for v in [metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)] + [mr])


def markdown_table(
    ours: dict[str, dict[str, Any]],
    published: dict[str, list[float]],
    kmax_search: dict[str, float] | None = None,
    seeds: dict[str, Any] | None = None,
    oracle: dict[str, Any] | None = None,
    views: dict[str, Any] | None = None,
) -> str:
    head = ("| method | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | mR | val mR | training |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")  # fmt: skip
    notes: list[str] = []
    lines = [f"| {name} (published) | " + " | ".join(f"{v:.2f}" for v in vals) + " | | |" for name, vals in published.items()]
    for name, r in ours.items():
        label = f"{name} (K={r['selected_k']})" if "selected_k" in r else name
        minutes = r["train_seconds_total"] / 60
        lines.append(f"| **vsekit {label}** | {_row(r['test'], r['test_mR'])} | {_val_mr(r):.2f} | {minutes:.1f} min |")
        if r.get("view_extract_seconds"):
            notes.append(f"{name}: view extraction " + ", ".join(f"{s} {v / 60:.1f} min" for s, v in r["view_extract_seconds"].items()))
    if views and views.get("runs") and views.get("recipe") in ours:
        name, first = views["recipe"], next(iter(views["runs"].values()))  # the main seed's run
        minutes = ours[name]["train_seconds_total"] / 60
        lines.append(f"| **vsekit {name} + test-time {'/'.join(views['views'])}** | {_row(first['test'], first['test_mR_views'])} | "
                     f"{first['val_mR_views']:.2f} | {minutes:.1f} min |")  # fmt: skip
    if oracle:
        lines.append(f"| scene-label oracle ({oracle['classes']} classes; a yardstick, not a method) | "
                     f"{_row(oracle['test'], oracle['test_mR'])} | | |")  # fmt: skip
    text = head + "\n".join(lines) + "\n"
    extract = next((r["extract_seconds"] for r in ours.values() if r.get("extract_seconds")), None)
    if extract:
        text += f"\nFeature extraction, shared by every recipe: {extract / 60:.1f} min (recorded when the features were extracted).\n"
    if notes:
        text += "Extra views, counted apart: " + "; ".join(notes) + ".\n"
    if kmax_search:
        text += "\nK-max search (image K, best val mR): " + ", ".join(f"K={k}: {v:.2f}" for k, v in kmax_search.items()) + "\n"
    if seeds:
        per = ", ".join(f"seed {s}: {v:.2f}" for s, v in seeds["test_mR"].items())
        text += (f"\n{seeds['recipe']} over {len(seeds['test_mR'])} seeds: test mR **{seeds['mean']:.2f} ± {seeds['std']:.2f}**"
                 f" (sample std; {per})\n")  # fmt: skip
    if views and views.get("runs"):
        n, v = len(views["runs"]), views
        per = ", ".join(f"{name}: {r['test_mR_views']:.2f}" for name, r in v["runs"].items())
        text += (f"\n{v['recipe']} with test-time views {', '.join(v['views'])} averaged in (`data.eval_views`), {n} run(s):"
                 f" val mR {v['val_mR_plain']['mean']:.2f} -> {v['val_mR_views']['mean']:.2f}, test mR"
                 f" {v['test_mR_plain']['mean']:.2f} -> **{v['test_mR_views']['mean']:.2f} ± {v['test_mR_views']['std']:.2f}**"
                 f" ({per}). View extraction: val {v['extract_seconds']['val'] / 60:.1f} min, test"
                 f" {v['extract_seconds']['test'] / 60:.1f} min.\n")  # fmt: skip
    return text


def scene_label_oracle(ann: Path, split: str = "test", captions_per_image: int = 5, tie_breaks: int = 5) -> dict[str, Any] | None:
    """Recall of a "model" that knows only each image's scene label (RSICD's ``label``, 31 classes).

    Image i and caption j score 1 when their images share a label, 0 otherwise, and ties are broken at
    random (``tie_breaks`` draws, averaged). It is not a method but a yardstick: what telling scene
    classes apart is worth under this protocol. ``None`` when the JSON has no labels.
    """
    images = [im for im in json.loads(ann.read_text(encoding="utf-8"))["images"] if im.get("split") == split]
    if not images or any("label" not in im or len(im.get("sentences", [])) < captions_per_image for im in images):
        return None
    names = sorted({str(im["label"]) for im in images})
    labels = np.array([names.index(str(im["label"])) for im in images])
    same = (labels[:, None] == np.repeat(labels, captions_per_image)[None, :]).astype(np.float32)
    runs = []
    for seed in range(tie_breaks):
        noise = np.random.default_rng(seed).random(same.shape, dtype=np.float32)
        runs.append(evaluate_sims(same + 1e-3 * noise, captions_per_image))
    metrics = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    mrs = [mean_recall(r) for r in runs]
    return {"classes": len(names), "test": metrics, "test_mR": float(np.mean(mrs)), "test_mR_std": float(np.std(mrs))}


def _val_mr(res: dict[str, Any]) -> float:
    return max(h["val_mR"] for h in res["val_history"])


def _train_one(name: str, recipe: tuple[str, list[str], str], seed: int, ctx: dict[str, Any]) -> dict[str, Any]:
    """Train one recipe with one seed (resumable: a finished run folder is only reloaded)."""
    preset, overrides, desc = recipe
    extra = [f"data.path={ctx['ann']}", f"data.features={ctx['feats']}", f"seed={seed}", *ctx["schedule"],
             *ctx["overrides"]]  # fmt: skip
    cfg = load_config(preset=preset, overrides=[*overrides, *extra])
    run_dir = ctx["out"] / "runs" / f"{name}_seed{seed}"
    t1 = time.perf_counter()
    res = train(cfg, run_dir, log=print, progress_stream=sys.stderr)
    return {
        "description": desc,
        "preset": preset,
        "seed": seed,
        "overrides": [*overrides, *extra],
        "run_dir": str(run_dir),
        "val_history": [{"epoch": r["epoch"], "val_mR": r["val_rsum"] / 6.0} for r in res.history],
        "best_epoch": res.best_epoch,
        "train_seconds_this_call": round(time.perf_counter() - t1, 1),
        "train_seconds_total": round(sum(r.get("train_seconds", 0) + r.get("val_seconds", 0) for r in res.history), 1),
        "extract_seconds": ctx["extract_seconds"],
        "_model": res.model,
        "_cfg": cfg,
    }


def _test_once(r: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the selected checkpoint on ``test`` (once per final recipe and seed)."""
    cfg, model = r.pop("_cfg"), r.pop("_model")
    test = build_dataset(cfg.data, cfg.data.test_split, evaluation=True)
    sims = similarity_matrix(model, test, cfg.eval_batch_size)
    np.save(Path(r["run_dir"]) / "test_sims.npy", sims)
    metrics = evaluate_sims(sims, test.captions_per_image)
    curve = recall_curve(sims, test.captions_per_image, max_k=50)
    return r | {"test": metrics, "test_mR": mean_recall(metrics), "recall_at_k": {k: v.tolist() for k, v in curve.items()}}


def recipe_views(name: str, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, list[str]]:
    """The views (vsekit extract --views) a recipe's config reads, per split: its ``data.train_views`` for the
    training split, its ``data.eval_views`` for val and test (with ``overrides`` applied, as when it trains).
    They are extracted before it trains and timed apart; the preset is their one source."""
    preset, recipe_overrides, _ = RECIPES[name]
    data = load_config(preset=preset, overrides=[*recipe_overrides, *overrides], require_data=False).data
    needed = {data.train_split: data.train_views, data.val_split: data.eval_views, data.test_split: data.eval_views}
    return {split: list(views) for split, views in needed.items() if views}


def _extract_views(needed: dict[str, list[str]], ctx: dict[str, Any], images: Path) -> dict[str, Any]:
    """Extract the views a recipe needs (per split); their recorded extraction seconds, per split."""
    if not needed:
        return {}
    seconds = {}
    for split, views in needed.items():
        meta = extract_features(ctx["ann"], images, ctx["feats"], splits=[split], views=views, progress_stream=sys.stderr)
        seconds[split] = round(sum(meta["splits"][split]["views"][v]["extract_seconds"] for v in views), 1)
    return {"view_extract_seconds": seconds}


def _with_views(views: list[str], run_dirs: list[Path], ctx: dict[str, Any], images: Path) -> dict[str, Any]:
    """Extract the test-time ``views`` of val and test (timed apart from the main extraction) and evaluate each
    run's selected checkpoint on val and test without and with them (``data.eval_views``), side by side."""
    from vsekit.checkpoint import config_from_checkpoint, model_from_checkpoint, read_checkpoint

    seconds = _extract_views({"val": views, "test": views}, ctx, images)["view_extract_seconds"]
    runs: dict[str, Any] = {}
    for run_dir in run_dirs:
        ckpt = read_checkpoint(run_dir / "best.pt")
        cfg, model = config_from_checkpoint(ckpt), model_from_checkpoint(ckpt).eval()
        cfg.data.path, cfg.data.features = str(ctx["ann"]), str(ctx["feats"])
        row: dict[str, Any] = {}
        for label, chosen in (("plain", []), ("views", views)):
            cfg.data.eval_views = chosen
            for split in ("val", "test"):
                ds = build_dataset(cfg.data, split, evaluation=True)
                metrics = evaluate_sims(similarity_matrix(model, ds, cfg.eval_batch_size), ds.captions_per_image)
                row[f"{split}_mR_{label}"] = mean_recall(metrics)
                if split == "test" and label == "views":
                    row["test"] = metrics
        runs[run_dir.name] = row
        print(f"{run_dir.name}: val mR {row['val_mR_plain']:.2f} -> {row['val_mR_views']:.2f}, "
              f"test mR {row['test_mR_plain']:.2f} -> {row['test_mR_views']:.2f} with views {views}")  # fmt: skip
    out: dict[str, Any] = {"views": views, "extract_seconds": seconds, "runs": runs}
    for key in ("val_mR_plain", "val_mR_views", "test_mR_plain", "test_mR_views"):
        vals = np.array([r[key] for r in runs.values()])
        out[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = Path(args.data)
    ann, images = data / "dataset_rsicd.json", data / "images"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    feats = out / "features_lite0"
    t0 = time.perf_counter()
    meta = extract_features(ann, images, feats, splits=["train", "val", "test"], progress_stream=sys.stderr)
    extract_s = round(time.perf_counter() - t0, 1)
    # extraction wall time: this call's, or the time recorded when the features were extracted
    spent = round(sum(t.get("recorded_seconds") or t.get("seconds", 0.0) for t in meta["timing"].values()), 1)
    print(f"features: {feats} ({extract_s:.0f}s now; extraction time recorded per split: {meta['timing']})")

    known = [*RECIPES, KMAX]
    names = [n for n in args.recipes.split(",") if n] if args.recipes else DEFAULT_RECIPES
    unknown = [n for n in names if n not in known]
    if unknown:
        raise VsekitError(f"--recipes: unknown recipe {unknown[0]!r} (known: {', '.join(known)})")
    try:
        kmax_ks = [int(k) for k in args.kmax.split(",") if k]
        seeds = [int(x) for x in args.seeds.split(",") if x]
        views = [v for v in args.eval_views.split(",") if v]
        if any(v not in VIEWS for v in views):
            raise ValueError
    except ValueError:
        raise VsekitError(f"--kmax/--seeds/--eval-views: expected comma-separated integers / views ({', '.join(VIEWS)}), "
                          f"got {args.kmax!r} / {args.seeds!r} / {args.eval_views!r}") from None
    if KMAX in names and not kmax_ks:
        raise VsekitError("--kmax: give at least one K to search")
    ctx = {"ann": ann, "feats": feats, "out": out, "overrides": args.overrides, "extract_seconds": spent,
           "schedule": _schedule(args.epochs) if args.epochs else []}  # fmt: skip
    results_path = out / "results.json"
    saved = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results: dict[str, Any] = saved.get("recipes", {})
    search: dict[str, float] = saved.get("kmax_search", {})
    seed_runs: dict[str, Any] = saved.get("seeds", {})
    view_runs: dict[str, Any] = saved.get("eval_views", {})
    oracle = scene_label_oracle(ann)
    if oracle:
        print(f"scene-label oracle: test mR {oracle['test_mR']:.2f} ± {oracle['test_mR_std']:.2f} over tie-breaks")

    def save() -> None:
        doc = {"dataset": str(data), "features": meta | {"splits": {}}, "epochs_override": args.epochs,
               "recipes": results, "kmax_search": search, "seeds": seed_runs, "eval_views": view_runs}  # fmt: skip
        atomic_write_json(doc | ({"scene_label_oracle": oracle} if oracle else {}), results_path)

    for name in names:
        if name == KMAX:
            trained = {k: _train_one(kmax_run(k), kmax_recipe(k), args.seed, ctx) for k in kmax_ks}
            search.update({str(k): round(_val_mr(r), 3) for k, r in trained.items()})
            best_k = max(trained, key=lambda k: _val_mr(trained[k]))
            r = _test_once(trained[best_k]) | {"selected_k": best_k}
            print(f"kmax search on val (mR): {search}; selected K={best_k}")
        else:
            view_seconds = _extract_views(recipe_views(name, ctx["overrides"]), ctx, images)
            r = _test_once(_train_one(name, RECIPES[name], args.seed, ctx)) | view_seconds
        results[name] = r
        print(f"{name}: val mR {_val_mr(r):.2f}, test mR {r['test_mR']:.2f} (rsum {r['test']['rsum']:.1f}), "
              f"training {r['train_seconds_total']:.0f}s")  # fmt: skip
        save()

    if seeds and results:
        # More seeds for the recipe with the best validation mR (chosen on val, never on test).
        best = args.seed_recipe or max(results, key=lambda n: _val_mr(results[n]))
        if best not in results:
            raise VsekitError(f"--seed-recipe: {best!r} has not been run (ran: {', '.join(results)})")
        recipe = kmax_recipe(results[best]["selected_k"]) if best == KMAX else RECIPES[best]
        stem = kmax_run(results[best]["selected_k"]) if best == KMAX else best
        runs = {str(args.seed): results[best]}
        for seed in seeds:
            if seed != args.seed:
                runs[str(seed)] = _test_once(_train_one(stem, recipe, seed, ctx))
        mrs = np.array([r["test_mR"] for r in runs.values()])
        seed_runs = {"recipe": best, "test_mR": {s: r["test_mR"] for s, r in runs.items()},
                     "train_seconds": {s: r["train_seconds_total"] for s, r in runs.items()},
                     "mean": float(mrs.mean()), "std": float(mrs.std(ddof=1)) if len(mrs) > 1 else 0.0,
                     "min": float(mrs.min()), "max": float(mrs.max())}  # fmt: skip
        print(f"{best} over seeds {list(runs)}: test mR {seed_runs['mean']:.2f} ± {seed_runs['std']:.2f} "
              f"(min {seed_runs['min']:.2f}, max {seed_runs['max']:.2f})")  # fmt: skip
        save()

    if views and results:
        # Test-time views for --views-recipe, or the recipe the seeds repeat, or the best by val: compared on val and
        # test side by side.
        best = args.views_recipe or seed_runs.get("recipe") or max(results, key=lambda n: _val_mr(results[n]))
        if best not in results:
            raise VsekitError(f"--views-recipe: {best!r} has not been run (ran: {', '.join(results)})")
        stem = kmax_run(results[best]["selected_k"]) if best == KMAX else best
        seed_list = [args.seed, *(s for s in seeds if s != args.seed)]
        recipe = kmax_recipe(results[best]["selected_k"]) if best == KMAX else RECIPES[best]
        for seed in seed_list:  # trains the runs that are missing, only reloads the others
            _train_one(stem, recipe, seed, ctx)
        view_runs = _with_views(views, [ctx["out"] / "runs" / f"{stem}_seed{s}" for s in seed_list], ctx, images)
        view_runs["recipe"] = best
        save()
    table = markdown_table(results, published_rows(data / "README.md"), search, seed_runs, oracle, view_runs)
    atomic_write_text(table, out / "table.md")
    _plots(results, out)
    best = max(results, key=lambda n: _val_mr(results[n]))
    _retrievals(best, Path(results[best]["run_dir"]) / "test_sims.npy", ann, images, out / "retrievals.png")
    print(table)
    return results


def _plots(results: dict[str, Any], out: Path) -> None:
    import numpy as np

    from vsekit.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, (name, r) in enumerate(results.items()):
        ax.plot([h["epoch"] for h in r["val_history"]], [h["val_mR"] for h in r["val_history"]], marker="o", ms=3, label=name,
                linestyle=line_style(i))  # fmt: skip
    ax.set(xlabel="epoch", ylabel="validation mR", title="RSICD validation mR per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, out / "val_mr.png")
    curves = {n: {k: np.asarray(v) for k, v in r["recall_at_k"].items()} for n, r in results.items()}
    plot_recall_curves(curves, out / "recall_at_k.png", title="RSICD test")


def _retrievals(name: str, sims_path: Path, ann: Path, images: Path, path: Path, queries: int = 8, top: int = 5) -> None:
    """Top-``top`` test images for ``queries`` test captions spread over the split (one per image)."""
    from vsekit.data.karpathy import KarpathyJSON
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
    p.add_argument("--recipes", help=f"comma-separated subset of: {', '.join([*RECIPES, KMAX])}")
    p.add_argument("--epochs", type=int, help="override every recipe's epochs (quick runs)")
    p.add_argument("--seed", type=int, default=0, help="the seed of every recipe's main run")
    p.add_argument("--kmax", default="2,5,10,20", help="image K values searched on val for kmax_bigru")
    p.add_argument("--seeds", default="", help="e.g. 0,1,2: also run the best recipe (by val mR) with these seeds")
    p.add_argument("--seed-recipe", help="the recipe that --seeds repeats (default: the best by val mR)")
    p.add_argument("--eval-views", default="", help="e.g. rot90,rot180,rot270: also evaluate a recipe's runs (--seed and "
                   "--seeds) with these test-time views averaged in (extracted for val and test, timed apart)")
    p.add_argument("--views-recipe", help="the recipe --eval-views evaluates (default: the one --seeds repeats)")  # fmt: skip
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
