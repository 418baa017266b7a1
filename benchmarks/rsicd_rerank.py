"""Query-bank normalisation of a trained model's RSICD similarities: a second stage at test time (issue 24).

An embedding ranking suffers from hubs: a few gallery items are close to very many queries and crowd every
result list. Query-bank normalisation (QB-Norm, Bogolin et al., CVPR 2022) measures each gallery item's
hubness against a bank of queries that are *not* the test queries: here the training split's captions (for
text→image) and the training images (for image→text), embedded by the same model. The inverted softmax then
scores a query q against a gallery item g as ``β·s(q, g) − log Σ_b exp(β·s(b, g))``; the dynamic form (DIS)
applies it only to queries whose best item is a hub (the best item of some bank query) and keeps the plain
scores for the others. :func:`vsekit.evaluation.querybank_normalize` computes both.

Protocol: β and the form are chosen on ``val``; ``test`` is evaluated once, with that choice, beside the plain
ranking. The cost per query is the bank's similarities to the gallery, computed once per gallery (not per query).

Usage:
    python benchmarks/rsicd_rerank.py --features F [--data ../shared/datasets/rsicd/dataset_rsicd.json]
        --model RUN [--cache runs/rsicd_rerank] [--out benchmarks/results/rsicd_rerank.json]
        [--bank train,val --fixed "IS beta=20"]   # a model trained on train+val: its bank is its training data
    python benchmarks/rsicd_rerank.py --features F --model RUN_A RUN_B --cache CACHE_A CACHE_B   # an ensemble
    python benchmarks/rsicd_rerank.py --summarize SEED0.json SEED1.json SEED2.json  # mean ± s.d.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

RECALLS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
BETAS = (5.0, 10.0, 20.0, 30.0, 50.0, 80.0)


def embeddings(model_name: str, data: Path, features: Path, split: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """The split's image (view-averaged) and caption embeddings, cached as .npy."""
    out = cache / f"{split}.npz"
    if out.is_file():
        z = np.load(out)
        return z["images"], z["captions"]
    import vsekit
    from vsekit.checkpoint import config_from_checkpoint, read_checkpoint
    from vsekit.data.factory import build_dataset
    from vsekit.evaluation import encode_dataset

    ckpt = read_checkpoint(model_name)
    cfg = config_from_checkpoint(ckpt)
    cfg.data.path, cfg.data.features = str(data), str(features)
    model = vsekit.load(model_name)
    start = time.perf_counter()
    img, cap = encode_dataset(model, build_dataset(cfg.data, split, evaluation=True))
    print(f"{split}: {len(img)} images, {len(cap)} captions embedded in {time.perf_counter() - start:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(out, images=img.numpy(), captions=cap.numpy())
    return img.numpy(), cap.numpy()


def ensemble(members: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """The images and captions of one model, or of an ensemble of cosine models: their normalised embeddings side
    by side, scaled by 1/sqrt(n), whose dot products are the mean of the members' cosines."""
    scale = 1 / np.sqrt(len(members))
    return {k: np.concatenate([m[i] for m in members], axis=1) * scale for i, k in enumerate(("images", "captions"))}


def mean_recall(metrics: dict) -> float:
    return sum(metrics[k] for k in RECALLS) / 6


def evaluate(scores, beta: float | None, dynamic: bool) -> dict:
    """Metrics of the plain ranking (beta None) or of the normalised one, both directions, from one split's
    :class:`vsekit.evaluation.QueryBankSims`."""
    from vsekit.evaluation import evaluate_sims

    if beta is None:
        return evaluate_sims(scores.sims, captions_per_image=5)
    return scores.evaluate(beta, dynamic)


def _as_rerank_result(doc: dict) -> dict:
    """A result of this script, or the rows of ``vsekit eval --querybank --json`` (``plain`` and one QB-Norm row, as
    ``benchmarks/rsicd_budget.py`` writes them) read as one."""
    if "test_plain" in doc:
        return doc
    normalised = [row for row in doc if row.startswith("QB-Norm")]
    if "plain" not in doc or len(normalised) != 1:
        raise ValueError("expected this script's result or vsekit eval's rows 'plain' and one 'QB-Norm ...' row")
    return {"test_plain": doc["plain"], "test_normalised": doc[normalised[0]]}


def summarize(paths: list[Path]) -> str:
    """Markdown rows of the mean R@K and the mean ± sample s.d. of mR over several results (seeds), both stages
    (results of this script or ``vsekit eval --querybank`` rows)."""
    import json
    import statistics

    results = [_as_rerank_result(json.loads(path.read_text())) for path in paths]
    lines = ["| stage | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | mR (mean ± s.d.) | per seed |", "|---" * 9 + "|"]
    for stage, key in (("plain", "test_plain"), ("QB-Norm", "test_normalised")):
        recalls = [statistics.mean(r[key][k] for r in results) for k in RECALLS]
        mrs = [mean_recall(r[key]) for r in results]
        spread = statistics.stdev(mrs) if len(mrs) > 1 else 0.0
        cells = " | ".join(f"{v:.2f}" for v in recalls)
        lines.append(f"| {stage} | {cells} | {statistics.mean(mrs):.2f} ± {spread:.2f} | {', '.join(f'{m:.2f}' for m in mrs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--features", type=Path, help="the extracted features and views (needed unless --summarize)")
    p.add_argument("--data", type=Path, default=Path("../shared/datasets/rsicd/dataset_rsicd.json"))
    p.add_argument("--model", nargs="+", help="a model, or several: their ensemble (cosine "
                   "models: each one's normalised embeddings side by side, scaled by 1/sqrt(n), score the mean similarity)")  # fmt: skip
    p.add_argument("--cache", type=Path, nargs="+", default=[Path("runs/rsicd_rerank")], help="one folder per model")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/rsicd_rerank.json"))
    p.add_argument("--bank", default="train", help="the splits whose images and captions form the bank (train,val for "
                   "a model trained on train+val)")  # fmt: skip
    p.add_argument("--fixed", help="skip the choice on val and use this row, e.g. 'IS beta=20' (for a model trained on "
                   "train+val, with the choice made on val by its train-only runs)")  # fmt: skip
    p.add_argument("--summarize", nargs="+", type=Path, metavar="JSON", help="only print the mean ± s.d. over these "
                   "results (one per seed) as a Markdown table")  # fmt: skip
    args = p.parse_args(argv)
    from vsekit.io import atomic_write_json

    bank_splits = [s for s in args.bank.split(",") if s]
    needed = dict.fromkeys([*bank_splits, *([] if args.fixed else ["val"]), "test"])
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    if args.features is None or not args.model:
        p.error("--features and --model: required (the extracted features and views; the run(s) to evaluate)")
    if len(args.cache) != len(args.model):
        p.error(f"--cache: expected one folder per model ({len(args.model)}), got {len(args.cache)}")
    if len(args.model) > 1:
        from vsekit.checkpoint import config_from_checkpoint, read_checkpoint

        for m in args.model:
            if config_from_checkpoint(read_checkpoint(m)).model.similarity != "cosine":
                p.error(f"--model {m}: an ensemble here needs cosine models")
    emb = {s: ensemble([embeddings(m, args.data, args.features, s, c) for m, c in zip(args.model, args.cache)])
           for s in needed}  # fmt: skip
    bank = {k: np.concatenate([emb[s][k] for s in bank_splits]) for k in ("images", "captions")}  # a bank is a set
    from vsekit.evaluation import QueryBankSims

    scores = {s: QueryBankSims.from_embeddings(emb[s]["images"], emb[s]["captions"], bank["images"], bank["captions"])
              for s in ("val", "test") if s in emb}  # the bank's similarities once per split  # fmt: skip
    rows = {}
    if args.fixed:
        best = args.fixed
    else:
        rows["plain"] = mean_recall(evaluate(scores["val"], None, False))
        for dynamic in (False, True):
            for beta in BETAS:
                rows[f"{'DIS' if dynamic else 'IS'} beta={beta:g}"] = mean_recall(evaluate(scores["val"], beta, dynamic))
        print(f"{'val':<20} {'mR':>6}")
        for name, mr in rows.items():
            print(f"{name:<20} {mr:>6.2f}")
        best = max((n for n in rows if n != "plain"), key=rows.get)
    form, beta = best.split(" beta=")
    start = time.perf_counter()
    test_plain = evaluate(scores["test"], None, False)
    test_norm = evaluate(scores["test"], float(beta), form == "DIS")
    seconds = time.perf_counter() - start
    how = "fixed" if args.fixed else "chosen on val"
    print(f"test, {how} ({best}): plain mR {mean_recall(test_plain):.2f} -> {mean_recall(test_norm):.2f}")
    print("  " + "  ".join(f"{k} {test_plain[k]:.2f}->{test_norm[k]:.2f}" for k in RECALLS))
    n_img, n_cap = len(bank["images"]), len(bank["captions"])
    result = {"model": args.model, "bank": f"{' + '.join(bank_splits)}: {n_img:,} images and {n_cap:,} captions",
              "val_mR": rows, "chosen": best, "how": how, "test_plain": test_plain, "test_normalised": test_norm,
              "test_mR": {"plain": mean_recall(test_plain), "normalised": mean_recall(test_norm)},
              "evaluation_seconds": seconds}  # fmt: skip
    atomic_write_json(result, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
