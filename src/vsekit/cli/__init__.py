"""The ``vsekit`` command line: a thin layer over the Python API.

    vsekit demo                                   train on built-in data, compare GPO / mean / max
    vsekit train --preset demo_gpo epochs=3       train (config file and/or preset, KEY=VALUE overrides)
    vsekit eval runs/demo_gpo --split test        evaluate a checkpoint (or run folder)
    vsekit eval --sims a.npy b.npy --folds 5      evaluate (an ensemble of) saved similarity matrices
    vsekit extract data.json images/ features/     store backbone grid features of a dataset (resumable)
    vsekit convert best.pth out.pt --vocab v.json import an official VSE∞ / VSE++ checkpoint
    vsekit encode runs/x photos/ --out photos.idx embed a folder / Karpathy JSON / CSV into a search index
    vsekit search photos.idx --text "a red car"   search an index (text/image/item/--queries FILE -> image/text)
    vsekit search photos/ --model rsicd-aerial ... search a folder of photos (indexed into photos/.vsekit/ first)
    vsekit search --server URL --text "a red car" ask a running 'vsekit serve' (also $VSEKIT_SERVER)
    vsekit serve photos.idx --port 8000           serve a search page and HTTP API over an index (or a folder)
    vsekit models                                 list the ready models (their names go wherever a checkpoint does)
    vsekit export runs/x out/                     write a run's model as a folder to ship (safetensors, card)
    vsekit presets                                list the presets
    vsekit config vse_infty_region_bigru          print a preset's resolved config

User mistakes print ``error: <one line>`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import VsekitError
from . import index_commands, train_commands
from .common import version


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vsekit", description="Visual-semantic embedding: train, evaluate, demo.")
    p.add_argument("--version", action="version", version=f"vsekit {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (*train_commands.PARSERS, *index_commands.PARSERS):
        add(sub.add_parser)
    return p


COMMANDS = {**train_commands.COMMANDS, **index_commands.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vsekit`` command."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may come on either side of the flags (argparse stops collecting a positional
    # list at the first flag): the ones after it arrive here and join the others
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args)
    except VsekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (a training run resumes from its last checkpoint with the same command)", file=sys.stderr)
        return 130
