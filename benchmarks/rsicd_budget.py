"""The best RSICD recipe from the JPEGs to the test metrics, every step timed: inside 90 minutes on this machine?

Runs, through the CLI, everything that turns the RSICD folder into a tested model, into a fresh ``--out``
folder, one step at a time, and times each:

1. ``extract_plain``: ``vsekit extract`` of the plain Lite0 grids of every split;
2. ``extract_test_views``: the views of the test images (what evaluating the model on test needs);
3. ``extract_train_views``: the views of the training images (``data.train_views``: the recipe's augmentation;
   and ``data.eval_views``, with which the query bank is embedded);
4. ``extract_val_views``: the views of the validation images (model selection; with ``--train-val`` also
   training data);
5. with ``--train-val`` only, ``extract_train_val``: the train+val files joined from the rows of steps 1–4 (no
   backbone pass);
6. ``train``: ``vsekit train --preset PRESET`` on the training split, or on train+val with ``--train-val``
   (validation after every epoch included);
7. without ``--train-val``, ``querybank_val``: ``vsekit eval RUN --split val --querybank train`` over the QB-Norm
   forms and betas of :data:`BETAS`, the bank (the training split) embedded once and cached; the best row on val
   is the choice;
8. ``test``: ``vsekit eval RUN --split test --querybank BANK``, once, with that choice (``--train-val``: the
   choice given by ``--querybank-form``/``--querybank-beta``, made on val by train-only runs, and the bank
   train+val, the model's own training data): the plain ranking and the second stage.

Issue 24 asks for the whole path, extraction + training + evaluation, in at most 90 minutes on this 2-core CPU.
Two records per step show whether a step had the machine to itself: the 1-minute load average before it (right
after a previous step it still reads about that step's own load, 2 on two cores), and the cores it used, its CPU
time over its wall time (near the core count when nothing else competed). The script resumes: a rerun skips the
steps already done (their recorded times stand), and an interrupted step resumes and is marked ``resumed`` (its
time then covers the last attempt only). It prints a table and writes ``{out}/budget.json`` atomically.

Usage::

    python benchmarks/rsicd_budget.py ../shared/datasets/rsicd [--out benchmarks/results/rsicd_budget]
        [--preset rsicd_minilm_rot_ema] [--seed 0] [--members 1] [--train-val] [KEY=VALUE ...]

``--members N`` trains N models side by side in step 6 (seeds SEED..SEED+N-1, the cores shared out among them;
on a CPU one training thread does almost as much as two) and evaluates their ensemble, the mean of their
similarities, in steps 7 and 8.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from vsekit.config import apply_overrides
from vsekit.errors import VsekitError
from vsekit.io import atomic_write_json
from vsekit.presets import get_preset

REPO = Path(__file__).resolve().parents[1]
BUDGET_MINUTES = 90.0
BETAS = "5,10,20,30,50,80"
"""The QB-Norm inverse temperatures tried on val (both forms)."""


Commands = list[list[str]]
"""The ``vsekit`` command lines of one step, run side by side (several: the members of an ensemble)."""


def steps(args: argparse.Namespace) -> list[tuple[str, Commands | Callable[[], Commands]]]:
    """The recipe's steps (a callable where the lines depend on an earlier step's result); the views come from the
    preset (and overrides)."""
    cfg = apply_overrides(get_preset(args.preset), args.overrides)
    ann, images = str(args.data / "dataset_rsicd.json"), str(args.data / "images")
    feats, out = str(args.out / "features_lite0"), args.out
    runs = [str(out / "run")] + [str(out / f"run.{i}") for i in range(1, args.members)]
    extract = ["extract", ann, images, feats]
    plan: list[tuple[str, Commands | Callable[[], Commands]]] = [("extract_plain", [extract])]
    both = sorted({*cfg.data.eval_views, *cfg.data.train_views})  # the bank (train) is evaluated with eval_views
    for name, split, views in (("test", "test", cfg.data.eval_views), ("train", "train", both),
                               ("val", "val", both if args.train_val else cfg.data.eval_views)):  # fmt: skip
        if views:
            plan.append((f"extract_{name}_views", [[*extract, "--splits", split, "--views", ",".join(views)]]))
    train = ["train", "--preset", args.preset, f"data.path={ann}", f"data.features={feats}"]
    bank, cache = "train", str(out / "bank.npz")
    if args.train_val:
        plan.append(("extract_train_val", [[*extract, "--splits", "train+val", *(["--views", ",".join(both)] if both else [])]]))
        train.append("data.train_split=train+val")
        bank = "train+val"
    plan.append(("train", [[*train, f"seed={args.seed + i}", *args.overrides, "--run-dir", r] for i, r in enumerate(runs)]))
    qb = ["--querybank", bank, "--querybank-cache", cache, "--quiet"]
    if not args.train_val:
        plan.append(("querybank_val", [["eval", *runs, "--split", "val", *qb, "--querybank-beta", BETAS,
                                        "--querybank-form", "is,dis", "--json", str(out / "val_querybank.json")]]))  # fmt: skip

    def test() -> Commands:
        form, beta = (args.querybank_form, args.querybank_beta) if args.train_val else chosen_on_val(out)
        return [["eval", *runs, "--split", "test", *qb, "--querybank-form", form, "--querybank-beta", beta,
                 "--json", str(out / "test.json")]]  # fmt: skip

    plan.append(("test", test))
    return plan


def chosen_on_val(out: Path) -> tuple[str, str]:
    """The QB-Norm form and beta of the best val row of ``querybank_val`` (mR; ties: the first)."""
    rows = json.loads((out / "val_querybank.json").read_text())
    best = max((name for name in rows if name != "plain"), key=lambda name: rows[name]["rsum"])
    form, beta = best.removeprefix("QB-Norm ").split(" beta=")
    return form.lower(), beta


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of every finished child process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except VsekitError as e:  # a bad preset name or override
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(argv: list[str] | None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="the RSICD folder (dataset_rsicd.json, images/)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rsicd_budget")
    p.add_argument("--preset", default="rsicd_minilm_rot_ema")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--members", type=int, default=1, help="train this many models side by side (seeds SEED, SEED+1, ...) "
                   "and evaluate their ensemble (default: 1)")  # fmt: skip
    p.add_argument("--train-val", action="store_true", help="the final recipe: train on train+val, the QB-Norm choice fixed")
    p.add_argument("--querybank-form", default="is", help="with --train-val: the form chosen on val (default: is)")
    p.add_argument("--querybank-beta", default="20", help="with --train-val: the beta chosen on val (default: 20)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for the training step")
    args = p.parse_intermixed_args(argv)
    if not (args.data / "dataset_rsicd.json").is_file():
        print(f"error: {args.data}: no dataset_rsicd.json there (expected the RSICD folder)", file=sys.stderr)
        return 2
    plan = steps(args)  # checks the preset and overrides before anything runs
    args.out.mkdir(parents=True, exist_ok=True)
    state = args.out / "budget.json"
    if args.members < 1:
        print(f"error: --members: expected a positive count, got {args.members}", file=sys.stderr)
        return 2
    what = {"preset": args.preset, "seed": args.seed, "train_val": args.train_val, "members": args.members}
    record = json.loads(state.read_text()) if state.is_file() else {**what, "steps": {}}
    if {k: record.get(k, {"train_val": False, "members": 1}.get(k)) for k in what} != what:
        print(f"error: {state} records {', '.join(f'{k} {record.get(k)}' for k in what)}; use another --out", file=sys.stderr)
        return 2
    record.update(cpus=len(os.sched_getaffinity(0)), started=record.get("started", {}))
    for name, cli in plan:
        if name in record["steps"]:
            print(f"== {name}: done before ({record['steps'][name]['seconds'] / 60:.1f} min)")
            continue
        if not run_step(name, cli if isinstance(cli, list) else cli(), record, state):
            return 1
    test = json.loads((args.out / "test.json").read_text())
    record["test"], record["minutes"] = test, round(sum(s["seconds"] for s in record["steps"].values()) / 60, 2)
    atomic_write_json(record, state)
    report(args, record, [name for name, _ in plan])
    print(f"wrote {state}")
    return 0


def run_step(name: str, commands: Commands, record: dict, state: Path) -> bool:
    """Run one step's ``vsekit`` subprocesses side by side (the cores shared out among them) and record its time,
    load and cores; False when one failed."""
    resumed = name in record["started"]
    record["started"][name] = time.strftime("%Y-%m-%d %H:%M:%S")
    load = os.getloadavg()[0]
    atomic_write_json(record, state)
    env = dict(os.environ)
    if len(commands) > 1:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(max(1, record["cpus"] // len(commands)))
    for cli in commands:
        print(f"== {name}: vsekit {' '.join(cli)}  (load average {load:.2f})", flush=True)
    t0, cpu0 = time.perf_counter(), _children_cpu_seconds()
    children = [subprocess.Popen([sys.executable, "-m", "vsekit", *cli], env=env) for cli in commands]
    codes = [child.wait() for child in children]
    seconds, cpu = time.perf_counter() - t0, _children_cpu_seconds() - cpu0
    if any(codes):
        print(f"error: step {name} failed (exit {max(codes)}); rerun to resume", file=sys.stderr)
        return False
    record["steps"][name] = {"seconds": round(seconds, 1), "load_before": round(load, 2),
                             "cores_used": round(cpu / seconds, 2), "resumed": resumed}  # fmt: skip
    atomic_write_json(record, state)
    return True


def report(args: argparse.Namespace, record: dict, names: list[str]) -> None:
    """The timing table, the total against the budget, and the test metrics of both stages."""
    total = record["minutes"]
    seeds = f"seed {args.seed}" if args.members == 1 else f"an ensemble of seeds {args.seed}-{args.seed + args.members - 1}"
    print(f"\n{args.preset}, {seeds}{', trained on train+val' if args.train_val else ''}, {record['cpus']} CPU cores")
    print("| step | minutes | share | load before | cores used | resumed |")
    print("|---|---|---|---|---|---|")
    for name in names:
        s = record["steps"][name]
        print(f"| {name} | {s['seconds'] / 60:.2f} | {s['seconds'] / 60 / total:.0%} | {s['load_before']:.2f} | "
              f"{s['cores_used']:.2f} | {'yes' if s['resumed'] else ''} |")  # fmt: skip
    verdict = "met" if total <= BUDGET_MINUTES else "MISSED"
    print(f"| **total** | **{total:.1f}** | | | | |\n\nJPEGs to test metrics: {total:.1f} min, budget {BUDGET_MINUTES:.0f}: {verdict}")
    for row, t in record["test"].items():
        print(f"test {row}: mR {t['rsum'] / 6:.2f} (i2t R@1/5/10 {t['i2t_r1']:.2f} / {t['i2t_r5']:.2f} / "
              f"{t['i2t_r10']:.2f}, t2i {t['t2i_r1']:.2f} / {t['t2i_r5']:.2f} / {t['t2i_r10']:.2f})")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
