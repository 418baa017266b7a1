"""``vsekit eval``: the retrieval metrics of a checkpoint on a split, or of saved similarity matrices; with
``--querybank`` also after query-bank normalisation against another split (a second stage at test time)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .common import comma_list


def add_eval(new_command: Callable[..., argparse.ArgumentParser]) -> None:
    e = new_command("eval", help="evaluate a checkpoint, or saved similarity matrices")
    e.add_argument("checkpoint", nargs="*", help="checkpoint file, run folder, model folder or ready model name (vsekit "
                   "models); several: an ensemble, their similarities averaged")  # fmt: skip
    e.add_argument("--split", help="split to evaluate (default: the config's test split)")
    e.add_argument("--data-path", help="data folder/file (default: the one in the checkpoint's config)")
    e.add_argument("--features", help="feature folder for Karpathy-JSON data")
    e.add_argument("--images", help="image folder for Karpathy-JSON data (raw-image models)")
    e.add_argument("--eval-views", help="average each image's embedding over these test-time views too, e.g. "
                   "rot90,rot180,rot270 (files from 'vsekit extract --views'; '' for none; default: the checkpoint's)")  # fmt: skip
    e.add_argument("--protocol", help="coco1k, coco5k, f30k or kcaptions (default: folds=1)")
    e.add_argument("--sims", nargs="+", help="evaluate these saved images×captions .npy matrices (averaged if several)")
    e.add_argument("--captions-per-image", type=int, default=5, help="with --sims (default 5)")
    e.add_argument("--folds", type=int, default=1, help="sequential folds averaged (5 for COCO 1K)")
    e.add_argument("--save-sims", help="save the similarity matrix to this .npy (for ensembles)")
    e.add_argument("--querybank", metavar="SPLIT", help="also rank after query-bank normalisation against this split's "
                   "images and captions (QB-Norm; e.g. train: never the evaluated split)")  # fmt: skip
    e.add_argument("--querybank-beta", default="20", help="QB-Norm inverse temperatures, one row each (default: 20; "
                   "choose on val, e.g. 5,10,20,30,50)")  # fmt: skip
    e.add_argument("--querybank-form", default="is", help="is (inverted softmax), dis (its dynamic form) or is,dis")
    e.add_argument("--querybank-cache", metavar="NPZ", help="keep the bank's embeddings in this file and reuse them while "
                   "the checkpoint, the bank split and the views are the same (the bank is the costly part)")  # fmt: skip
    e.add_argument("--json", help="also write the metrics to this JSON file")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    e.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data.files import open_npy
    from ..evaluation import ensemble_sims, evaluate_protocol, evaluate_sims, format_metrics_table
    from ..io import atomic_write_json

    settings = _querybank_settings(args)
    if args.sims:
        if settings:
            raise ConfigError("--querybank: needs a checkpoint to embed the bank, not --sims")
        mats = [open_npy(path, "a similarity matrix") for path in args.sims]
        sims = ensemble_sims(mats) if len(mats) > 1 else np.asarray(mats[0])
        k = args.captions_per_image
        title = f"{len(mats)} similarity matri{'ces (averaged)' if len(mats) > 1 else 'x'}"
        results = {"result": evaluate_protocol(sims, args.protocol) if args.protocol else evaluate_sims(sims, k, args.folds)}
    else:
        results, title = _evaluate_checkpoint(args, settings)
    print(format_metrics_table(results, title=title))
    if args.json:
        atomic_write_json(results["result"] if list(results) == ["result"] else results, args.json)
    return 0


def _querybank_settings(args: argparse.Namespace) -> list[tuple[str, bool, float]]:
    """The (row name, dynamic, beta) of each QB-Norm row asked for; [] without ``--querybank``."""
    if not args.querybank:
        return []
    if args.protocol or args.folds != 1:
        raise ConfigError("--querybank: evaluates one fold; drop --protocol/--folds")
    forms = comma_list(args.querybank_form.lower())
    if not forms or any(f not in ("is", "dis") for f in forms):
        raise ConfigError(f"--querybank-form: expected is, dis or is,dis, got {args.querybank_form!r}")
    try:
        betas = [float(b) for b in comma_list(args.querybank_beta)]
    except ValueError:
        betas = []
    if not betas or not all(math.isfinite(b) and b > 0 for b in betas):
        raise ConfigError(f"--querybank-beta: expected positive numbers, e.g. 20 or 5,10,20, got {args.querybank_beta!r}")
    return [(f"QB-Norm {f.upper()} beta={b:g}", f == "dis", b) for f in forms for b in betas]


def _evaluate_checkpoint(args: argparse.Namespace, settings: list[tuple[str, bool, float]]) -> tuple[dict[str, Any], str]:
    import numpy as np

    from ..evaluation import QueryBankSims, evaluate_protocol, evaluate_sims

    if not args.checkpoint:
        raise DataError("eval: give a checkpoint (file or run folder) or --sims FILES")
    members = [_Member(path, args) for path in args.checkpoint]
    split = args.split or members[0].cfg.data.test_split
    if settings and split in args.querybank.split("+"):
        raise ConfigError(f"--querybank: the bank {args.querybank!r} holds the evaluated split {split!r}; use another split")
    datasets = [m.dataset(split) for m in members]
    embedded = [m.embed(d, f"embed {split}", args.quiet) for m, d in zip(members, datasets)]
    sims = _mean_similarity(members, [e[0] for e in embedded], [e[1] for e in embedded])
    if args.save_sims:
        from ..io import atomic_write

        atomic_write(args.save_sims, lambda f: np.save(f, sims))
    k = datasets[0].captions_per_image
    name = "plain" if settings else "result"
    results = {name: evaluate_protocol(sims, args.protocol) if args.protocol else evaluate_sims(sims, k, args.folds)}
    what = members[0].ckpt["path"] if len(members) == 1 else f"an ensemble of {len(members)} models (similarities averaged)"
    title = f"{what} on split {split!r} ({datasets[0].num_images} images)"
    if settings:
        banks = [m.dataset(args.querybank) for m in members]
        bank = [_bank_embeddings(m, b, i, args) for i, (m, b) in enumerate(zip(members, banks))]
        images, captions = [e[0] for e in embedded], [e[1] for e in embedded]
        scores = QueryBankSims(sims, _mean_similarity(members, images, [e[1] for e in bank]).T,
                               _mean_similarity(members, [e[0] for e in bank], captions))  # fmt: skip
        for row, dynamic, beta in settings:
            results[row] = scores.evaluate(beta, dynamic, k)
        title += f"; query bank: split {args.querybank!r} ({banks[0].num_images} images, {len(banks[0].captions())} captions)"
    return results, title


class _Member:
    """One evaluated checkpoint (an ensemble has several): its config with the command's data options, its model."""

    def __init__(self, path: str, args: argparse.Namespace) -> None:
        from ..checkpoint import config_from_checkpoint, model_from_checkpoint, read_checkpoint
        from ..configure import validate
        from ..device import resolve_device

        self.ckpt = read_checkpoint(path)
        cfg = config_from_checkpoint(self.ckpt)
        cfg.data.path = args.data_path or cfg.data.path
        cfg.data.features = args.features or cfg.data.features
        cfg.data.images = args.images or cfg.data.images
        if args.eval_views is not None:
            cfg.data.eval_views = comma_list(args.eval_views)
            validate(cfg, require_data=False)
        self.cfg = cfg
        self.model = model_from_checkpoint(self.ckpt).to(resolve_device(args.device)).eval()

    def dataset(self, split: str) -> Any:
        from ..data.factory import build_dataset

        return build_dataset(self.cfg.data, split, evaluation=True)

    def embed(self, dataset: Any, what: str, quiet: bool) -> tuple[Any, Any]:
        """The dataset's image and caption embeddings (NumPy), with a progress bar of both on stderr."""
        from ..evaluation import encode_dataset
        from ..progress import Progress

        bar = Progress(dataset.num_images + len(dataset.captions()), what, "items", None if quiet else sys.stderr)
        try:
            img, cap = encode_dataset(self.model, dataset, self.cfg.eval_batch_size, on_progress=bar.update)
        finally:
            bar.close()
        return img.numpy(), cap.numpy()


def _mean_similarity(members: list[_Member], images: list[Any], captions: list[Any]) -> Any:
    """The mean over the members of each one's similarity of its own embeddings (one member: its similarity)."""
    import torch

    if len({(len(a), len(b)) for a, b in zip(images, captions)}) > 1:
        raise DataError("eval: the ensemble's members read different images or captions of the split (check their data)")
    total = None
    for member, a, b in zip(members, images, captions):
        sims = member.model.similarity(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        total = sims if total is None else total + sims
    return total / len(members)


def _bank_embeddings(member: _Member, bank: Any, index: int, args: argparse.Namespace) -> tuple[Any, Any]:
    """A member's bank embeddings (NumPy), from ``--querybank-cache`` (member ``index`` > 0: ``NAME.{index}.npz``)
    when it holds them for this checkpoint file (path, size, mtime), bank split, data and views; otherwise
    embedded (and cached)."""
    import json
    import os

    import numpy as np

    from ..io import atomic_write

    ckpt, data = member.ckpt, member.cfg.data
    weights = os.stat(ckpt.get("weights_path", ckpt["path"]))
    key = json.dumps([str(Path(ckpt["path"]).resolve()), weights.st_size, weights.st_mtime_ns, args.querybank,
                      data.path, data.features, list(data.eval_views)])  # fmt: skip
    cache = Path(args.querybank_cache) if args.querybank_cache else None
    if cache is not None and index:
        cache = cache.with_name(f"{cache.stem}.{index}{cache.suffix}")
    if cache is not None and cache.is_file():
        try:
            with np.load(cache) as z:
                if str(z["key"]) == key:
                    return z["images"], z["captions"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable or foreign: embedded again and replaced
    img, cap = member.embed(bank, f"embed bank {args.querybank}", args.quiet)
    if cache is not None:
        atomic_write(cache, lambda f: np.savez(f, images=img, captions=cap, key=np.array(key)))
    return img, cap
