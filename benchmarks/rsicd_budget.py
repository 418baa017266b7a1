"""The best RSICD recipe from nothing, every step timed: is it inside issue 4's budgets on this machine?

Runs, through the CLI, everything that turns the RSICD folder into a tested model, into a fresh ``--out``
folder, one step at a time, and times each:

1. ``extract_plain``: ``vsekit extract`` of the plain Lite0 grids of every split;
2. ``extract_test_views``: the views of the test images (what evaluating the model on test needs);
3. ``extract_train_views``: the views of the training images (``data.train_views``: the recipe's augmentation);
4. ``extract_val_views``: the views of the validation images (its model selection);
5. ``train``: ``vsekit train --preset PRESET`` (validation after every epoch included);
6. ``test``: ``vsekit eval RUN --split test``, once.

The views are the preset's ``data.eval_views`` (test, val) and ``data.train_views`` (train).

Issue 4 asks for training ≤ 30 min and feature extraction ≤ 6 min, counted apart. Two accounts are printed:

- **by purpose**: extraction = the features a user needs to evaluate the model (steps 1 and 2); training =
  everything that produces the model and exists only for it (steps 3 to 5);
- **strict**: extraction = every backbone pass (steps 1–4); training = step 5.

The budgets mean one machine's cores to itself. Two records per step show whether it had them: the 1-minute
load average before the step (right after a previous step it still reads about that step's own load, 2 on two
cores), and the cores the step used, its CPU time over its wall time (near the machine's core count when nothing
else competed; well below it when other work took a share). The script resumes: a rerun skips the steps already done
(their recorded times stand), and a step that was interrupted resumes and is marked ``resumed`` (its time then
covers the last attempt only). It prints a table and writes ``{out}/budget.json`` atomically.

Usage::

    python benchmarks/rsicd_budget.py ../shared/datasets/rsicd [--out benchmarks/results/rsicd_budget]
        [--preset rsicd_minilm_rot_ema] [--seed 0] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from vsekit.config import apply_overrides
from vsekit.errors import VsekitError
from vsekit.io import atomic_write_json
from vsekit.presets import get_preset

REPO = Path(__file__).resolve().parents[1]
BUDGET_MINUTES = {"extraction": 6.0, "training": 30.0}
# the bucket of each step (None: in neither budget). By purpose, views used only to train or select the model
# are training work; strictly, every backbone pass (every extract_* step) is extraction.
BY_PURPOSE = {"extract_plain": "extraction", "extract_test_views": "extraction", "extract_train_views": "training",
              "extract_val_views": "training", "train": "training", "test": None}  # fmt: skip
ACCOUNTS = {
    "by purpose": BY_PURPOSE,
    "strict": {step: "extraction" if step.startswith("extract_") else bucket for step, bucket in BY_PURPOSE.items()},
}


def steps(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """The recipe's steps as ``vsekit`` command lines; the views come from the preset (and overrides)."""
    cfg = apply_overrides(get_preset(args.preset), args.overrides)
    ann, images = str(args.data / "dataset_rsicd.json"), str(args.data / "images")
    feats, run = str(args.out / "features_lite0"), str(args.out / "run")
    extract = ["extract", ann, images, feats]
    out = [("extract_plain", extract)]
    for name, split, views in (("test", "test", cfg.data.eval_views), ("train", "train", cfg.data.train_views),
                               ("val", "val", cfg.data.eval_views)):  # fmt: skip
        if views:
            out.append((f"extract_{name}_views", [*extract, "--splits", split, "--views", ",".join(views)]))
    out.append(("train", ["train", "--preset", args.preset, f"data.path={ann}", f"data.features={feats}",
                          f"seed={args.seed}", *args.overrides, "--run-dir", run]))  # fmt: skip
    out.append(("test", ["eval", run, "--split", "test", "--json", str(args.out / "test.json")]))
    return out


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of every finished child process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def totals(record: dict) -> dict[str, dict[str, float]]:
    """Minutes per budget in each account, from the steps done so far."""
    out = {}
    for account, buckets in ACCOUNTS.items():
        sums = dict.fromkeys(BUDGET_MINUTES, 0.0)
        for name, bucket in buckets.items():
            if bucket and name in record["steps"]:  # (a recipe without views has no view steps)
                sums[bucket] += record["steps"][name]["seconds"] / 60
        out[account] = {k: round(v, 2) for k, v in sums.items()}
    return out


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
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for the training step")
    args = p.parse_intermixed_args(argv)
    if not (args.data / "dataset_rsicd.json").is_file():
        print(f"error: {args.data}: no dataset_rsicd.json there (expected the RSICD folder)", file=sys.stderr)
        return 2
    plan = steps(args)  # checks the preset and overrides before anything runs
    args.out.mkdir(parents=True, exist_ok=True)
    state = args.out / "budget.json"
    record = json.loads(state.read_text()) if state.is_file() else {"preset": args.preset, "seed": args.seed, "steps": {}}
    if (record["preset"], record["seed"]) != (args.preset, args.seed):
        print(f"error: {state} records preset {record['preset']} seed {record['seed']}; use another --out", file=sys.stderr)
        return 2
    record.update(cpus=len(os.sched_getaffinity(0)), started=record.get("started", {}))

    for name, cli in plan:
        if name in record["steps"]:
            print(f"== {name}: done before ({record['steps'][name]['seconds'] / 60:.1f} min)")
            continue
        resumed = name in record["started"]
        record["started"][name] = time.strftime("%Y-%m-%d %H:%M:%S")
        load = os.getloadavg()[0]
        atomic_write_json(record, state)
        print(f"== {name}: vsekit {' '.join(cli)}  (load average {load:.2f})", flush=True)
        t0, cpu0 = time.perf_counter(), _children_cpu_seconds()
        done = subprocess.run([sys.executable, "-m", "vsekit", *cli])
        seconds, cpu = time.perf_counter() - t0, _children_cpu_seconds() - cpu0
        if done.returncode != 0:
            print(f"error: step {name} failed (exit {done.returncode}); rerun to resume", file=sys.stderr)
            return 1
        record["steps"][name] = {"seconds": round(seconds, 1), "load_before": round(load, 2),
                                 "cores_used": round(cpu / seconds, 2), "resumed": resumed}  # fmt: skip
        atomic_write_json(record, state)

    record["test"] = json.loads((args.out / "test.json").read_text())
    record["minutes"] = totals(record)
    atomic_write_json(record, state)

    print(f"\n{args.preset}, seed {args.seed}, {record['cpus']} CPU cores")
    print("| step | minutes | load before | cores used | resumed |")
    print("|---|---|---|---|---|")
    for name, _ in plan:
        s = record["steps"][name]
        cores = f"{s['cores_used']:.2f}" if "cores_used" in s else "-"  # (not recorded by the first version)
        print(f"| {name} | {s['seconds'] / 60:.2f} | {s['load_before']:.2f} | {cores} | {'yes' if s['resumed'] else ''} |")
    print("\n| account | extraction (≤ 6 min) | training (≤ 30 min) |")
    print("|---|---|---|")
    for account, sums in record["minutes"].items():
        cells = [f"{sums[b]:.1f} {'met' if sums[b] <= BUDGET_MINUTES[b] else 'MISSED'}" for b in BUDGET_MINUTES]
        print(f"| {account} | {' | '.join(cells)} |")
    t = record["test"]
    print(f"\ntest mR {t['rsum'] / 6:.2f} (i2t R@1/5/10 {t['i2t_r1']:.2f} / {t['i2t_r5']:.2f} / {t['i2t_r10']:.2f}, "
          f"t2i {t['t2i_r1']:.2f} / {t['t2i_r5']:.2f} / {t['t2i_r10']:.2f})")
    print(f"wrote {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
