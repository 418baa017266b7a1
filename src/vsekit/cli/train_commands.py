"""The commands that train, evaluate and ship models: demo, train, eval, extract, convert, presets, models, export, config."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import DataError
from .common import comma_list
from .eval_command import add_eval, cmd_eval


def _add_demo(new_command: Callable[..., argparse.ArgumentParser]) -> None:
    d = new_command("demo", help="train on built-in data with GPO, mean and max pooling and print the R@K table")
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    d.add_argument("--poolings", default="gpo,mean,max", help="comma-separated poolings to compare")
    d.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run, e.g. epochs=3")
    d.add_argument("--jobs", type=int, default=0, help="models trained at once (default: one per model, up to the cores)")
    d.add_argument("--quiet", action="store_true", help="only the final table")


def _add_train(new_command: Callable[..., argparse.ArgumentParser]) -> None:
    t = new_command("train", help="train a model")
    t.add_argument("--config", help="YAML or JSON config file (may name a 'preset:' to start from)")
    t.add_argument("--preset", help="start from this preset (see 'vsekit presets')")
    t.add_argument("--run-dir", help="run folder (default: runs/<name>); an existing run there is resumed")
    t.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run in --run-dir")
    t.add_argument("--max-steps", type=int, help="stop after this many steps (resumable)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-3 epochs=5")


def _add_extract(new_command: Callable[..., argparse.ArgumentParser]) -> None:
    x = new_command("extract", help="run an image backbone once over a dataset's images and store grid features")
    x.add_argument("annotations", help="Karpathy-style JSON (e.g. dataset_rsicd.json)")
    x.add_argument("images", help="folder holding the images")
    x.add_argument("out", help="output feature folder (an interrupted extraction there resumes)")
    x.add_argument("--splits", default="train,val,test", help="comma-separated splits (default: train,val,test)")
    x.add_argument("--backbone", default="efficientnet_lite0", help="backbone name (default: efficientnet_lite0)")
    x.add_argument("--image-size", type=int, default=224, help="network input side (default: 224)")
    x.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16, fastest on a CPU)")
    x.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    x.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    x.add_argument("--max-images", type=int, help="stop after this many images per split (resumable)")
    x.add_argument("--save-every-seconds", type=float, default=5.0, metavar="S",
                   help="save progress every S seconds (default 5; 0: after every batch): a killed run loses at most that")
    x.add_argument("--views", default="", help="also store these test-time views of every image for data.eval_views: "
                   "rot90, rot180, rot270, hflip, vflip, transpose, antitranspose (comma-separated)")  # fmt: skip
    x.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_convert(new_command: Callable[..., argparse.ArgumentParser]) -> None:
    v = new_command("convert", help="import an official VSE∞ (BiGRU / BERT, region features) or VSE++ (precomp) checkpoint")
    v.add_argument("checkpoint", help="the official .pth / .pth.tar file")
    v.add_argument("output", help="the vsekit checkpoint to write")
    v.add_argument("--vocab", metavar="FILE", help="the vocabulary it was trained with (SCAN JSON, or VSE++'s vocab .pkl); BiGRU / VSE++")
    v.add_argument("--bert", metavar="PATH", help="the local BERT folder it was trained from (config + tokenizer); VSE∞ BERT")
    v.add_argument("--kind", default="auto", metavar="KIND", help="auto (default), vse_infty_bigru, vse_infty_bert or vsepp")


def _add_presets_and_config(new_command: Callable[..., argparse.ArgumentParser]) -> None:
    new_command("presets", help="list the config presets")
    new_command("models", help="list the ready models (use a name wherever a checkpoint is taken)")
    x = new_command("export", help="write a checkpoint as a model folder to ship (safetensors, packaged parts left out)")
    x.add_argument("checkpoint", help="checkpoint file or run folder")
    x.add_argument("out", help="the model folder to write")
    x.add_argument("--description", default="", help="one line for 'vsekit models'")
    x.add_argument("--metrics", metavar="JSON", help="test metrics to list, e.g. the file 'vsekit eval --json' wrote")
    x.add_argument("--card", metavar="FILE", help="the model card (Markdown) to ship as README.md")
    x.add_argument("--half", action="store_true", help="store float16 weights (check the metrics with vsekit eval)")
    c = new_command("config", help="print the resolved config of a preset/file with overrides")
    c.add_argument("preset", nargs="?", help="preset name")
    c.add_argument("--config", help="config file")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    poolings = tuple(comma_list(args.poolings))
    summary = run_demo(args.out, poolings, args.overrides, log=None if args.quiet else print, jobs=args.jobs)
    print()
    print(summary["table"])
    print(f"chance level: R@1 = {summary['chance_r1']:.2f}%")
    res = summary["results"]
    if {"gpo", "mean", "max"} <= set(res):
        ranking = sorted(res, key=lambda p: -res[p]["rsum"])
        print("pooling comparison (rsum, same data and seed): " + " > ".join(f"{p} {res[p]['rsum']:.1f}" for p in ranking))
    print(f"trained and evaluated in {summary['total_seconds']:.0f}s; runs, curves.png, recall.png and results.json in {args.out}/")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ..configure import load_config
    from ..training import train
    from ..training.distributed import env_rank

    cfg = load_config(args.config, args.preset, args.overrides)
    run_dir = Path(args.run_dir or Path("runs") / cfg.name)
    main = env_rank() == 0  # under torchrun, rank 0 alone prints (train() logs from rank 0 only too)
    if (run_dir / "last.pt").is_file() and not args.no_resume and main:
        print(f"resuming the run in {run_dir}")
    result = train(
        cfg, run_dir, resume=not args.no_resume, log=print, max_steps=args.max_steps,
        progress_stream=None if args.quiet else sys.stderr,
    )  # fmt: skip
    if result.completed and main:
        print(f"best validation rsum {result.best_rsum:.2f} at epoch {result.best_epoch}; checkpoints in {run_dir}/")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from ..extract import extract_features

    splits = comma_list(args.splits)
    result = extract_features(
        args.annotations, args.images, args.out, splits=splits, backbone=args.backbone, image_size=args.image_size,
        batch_size=args.batch_size, dtype=args.dtype, device=args.device, max_images=args.max_images,
        progress_stream=None if args.quiet else sys.stderr, views=comma_list(args.views),
        save_every=args.save_every_seconds,
    )  # fmt: skip
    for split, t in result["timing"].items():
        if "images_per_second" in t:
            rate = f", {t['images_per_second']:.1f} images/s"
        elif "joined_from" in t:
            rate = f" (joined from the rows of {' and '.join(t['joined_from'])})"
        else:
            rate = f" ({t.get('skipped', '')})"
        print(f"{split}: {t['images']} images in {t['seconds']:.1f}s{rate}")
    done = [s for s in splits if s in result["splits"]]
    print(f"features of {', '.join(done) or 'no complete split'} in {args.out}/ (backbone {args.backbone})")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..convert import convert_official

    path = convert_official(args.checkpoint, args.output, vocab=args.vocab, bert_path=args.bert, kind=args.kind)
    print(f"wrote {path}; use it with vsekit.load or 'vsekit eval {path} --data-path DIR'")
    return 0


def _cmd_presets(_args: argparse.Namespace) -> int:
    from ..presets import list_presets

    presets = list_presets()
    width = max(len(n) for n in presets)
    for name, desc in presets.items():
        print(f"{name:<{width}}  {desc}")
    return 0


def _cmd_models(_args: argparse.Namespace) -> int:
    from ..pretrained import list_pretrained

    for m in list_pretrained() or [{"name": "(none installed)", "reads": "", "description": "", "metrics": {}}]:
        metrics = " ".join(f"{k} {v:.2f}" for k, v in m["metrics"].items())
        print(f"{m['name']:<16} reads {m['reads']:<8} {metrics:<16} {m['description']}".rstrip())
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import json

    from ..checkpoint import model_from_checkpoint, read_checkpoint
    from ..data.files import read_lines
    from ..pretrained import write_model_folder

    ckpt = read_checkpoint(args.checkpoint)
    model_from_checkpoint(ckpt)  # refuse what would not load
    metrics = {}
    if args.metrics:
        raw = json.loads("\n".join(read_lines(Path(args.metrics))) or "{}")
        keys = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
        metrics = {"test_mR": sum(raw[k] for k in keys) / 6} if all(k in raw for k in keys) else {}
    card = ""
    if args.card:
        try:
            card = Path(args.card).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"--card {args.card}: not a readable UTF-8 text file ({type(e).__name__})") from None
    out = write_model_folder(ckpt, args.out, description=args.description, metrics=metrics, card=card, half=args.half)
    print(f"wrote {out}/ ({', '.join(sorted(p.name for p in out.iterdir()))}); load it with vsekit.load({str(out)!r})")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from ..config import dump_yaml
    from ..configure import load_config

    print(dump_yaml(load_config(args.config, args.preset, args.overrides, require_data=False)), end="")
    return 0


PARSERS = (_add_demo, _add_train, add_eval, _add_extract, _add_convert, _add_presets_and_config)

COMMANDS = {
    "demo": _cmd_demo,
    "train": _cmd_train,
    "eval": cmd_eval,
    "extract": _cmd_extract,
    "convert": _cmd_convert,
    "presets": _cmd_presets,
    "models": _cmd_models,
    "export": _cmd_export,
    "config": _cmd_config,
}
