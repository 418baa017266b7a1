"""Benchmark the training step of the VSE∞ region + BiGRU model against the core release, side by side.

Usage::

    git worktree add /tmp/vsekit-core b6d18c0          # the core issue's code, once
    OMP_NUM_THREADS=1 python benchmarks/bench_train_step.py --baseline-src /tmp/vsekit-core/src \\
        [--steps 10] [--warmup 2] [--threads 1] [--out benchmarks/results/bench_train_step.json]

Workload: the ``vse_infty_region_bigru`` preset sizes (embed 1024, region features 36×2048 with the
residual MLP and size augmentation, BiGRU with 300-d words and text augmentation, GPO on both
sides, AdamW, gradient clipping at 2), batch 128, a 10,000-word vocabulary (about COCO's), captions
of 9..19 tokens (8..18 words plus ``<start>``/``<end>``), all 36 regions present. One step is
forward, loss, backward, clipping and the optimizer step on one fixed batch (the data pipeline is
not timed), plus each version's own per-step loss bookkeeping (the core version reads the loss
back to the host every step; the current one accumulates it on the device).

Each code version runs in its own worker process (``PYTHONPATH`` = its ``src``), both built from
the same seed and batch. After ``--warmup`` steps each, the workers are stepped alternately, one
step at a time, so that load changes on a shared machine hit both alike; the result is the median
step time of each and their ratio. With ``--profile`` the current code's step is also profiled
(``torch.profiler``, top operators by self time).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP = 1.5


# ------------------------------------------------------------------------------------------------
# worker: runs in a subprocess with one version of vsekit on its path


def _worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from vsekit import training
    from vsekit.data.collate import Batch
    from vsekit.data.vocab import Vocabulary
    from vsekit.losses import ContrastiveLoss
    from vsekit.models import create_model
    from vsekit.presets import get_preset

    cfg = get_preset("vse_infty_region_bigru")
    cfg.batch_size = args.batch
    torch.manual_seed(0)
    vocab = Vocabulary.from_words(f"w{i}" for i in range(args.vocab))
    model = create_model(cfg.model, vocab)
    optimizer = training.build_optimizer(model, cfg)
    loss_fn = ContrastiveLoss(cfg.loss.margin, cfg.loss.negatives)
    rng = np.random.default_rng(0)
    b = args.batch
    cap_len = rng.integers(9, 20, size=b)
    ids = np.zeros((b, int(cap_len.max())), dtype=np.int64)
    for i, n in enumerate(cap_len):
        ids[i, :n] = rng.integers(5, len(vocab) - 1, size=n)
    batch = Batch(
        images=torch.from_numpy(np.maximum(rng.standard_normal((b, 36, 2048), dtype=np.float32), 0)),
        image_lengths=torch.full((b,), 36, dtype=torch.int64),
        captions=torch.from_numpy(ids),
        caption_lengths=torch.from_numpy(cap_len.astype(np.int64)),
        image_ids=torch.arange(b),
        caption_ids=torch.arange(b),
    )
    has_compute_loss = hasattr(training, "compute_loss")
    loss_sum = torch.zeros(())
    model.train()

    def step() -> None:
        nonlocal loss_sum
        if has_compute_loss:  # current code: the loss function of the training loop
            loss = training.compute_loss(model, batch, loss_fn, cfg, cfg.precision)
        else:  # core release: the training loop's inline forward
            img = model.forward_image(batch.images, batch.image_lengths)
            cap = model.forward_text(batch.captions, batch.caption_lengths)
            loss = loss_fn(model.similarity(img.float(), cap.float()), batch.image_ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        if has_compute_loss:
            loss_sum += loss.detach()
        else:
            float(loss.detach())

    for _ in range(args.warmup):
        step()
    if args.profile:
        from torch.profiler import profile

        with profile() as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        step()
        print(f"{time.perf_counter() - start:.6f}", flush=True)


# ------------------------------------------------------------------------------------------------
# driver


def _start(src: Path, args: argparse.Namespace, name: str, extra: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--worker", "--threads", str(args.threads), "--batch", str(args.batch),
           "--vocab", str(args.vocab), "--warmup", str(args.warmup), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise SystemExit(f"{name} worker ({src}) failed to start; see its error above")
    return proc


def _step(proc: subprocess.Popen) -> float:
    proc.stdin.write("step\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-src", type=Path, default=Path("/work/baseline_core/src"),
                        help="the core release's src folder (git worktree add /tmp/vsekit-core b6d18c0)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per version (interleaved)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of the current step")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_train_step.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    if not (args.baseline_src / "vsekit" / "__init__.py").is_file():
        parser.error(f"--baseline-src {args.baseline_src}: no vsekit package there (git worktree add /tmp/vsekit-core b6d18c0)")

    candidates = {"core (b6d18c0)": (args.baseline_src, []), "current": (REPO / "src", ["--profile"] if args.profile else [])}
    procs = {}
    try:
        for name, (src, extra) in candidates.items():
            procs[name] = _start(src, args, name, extra)
        samples: dict[str, list[float]] = {name: [] for name in procs}
        for _ in range(args.steps):
            for name, proc in procs.items():
                samples[name].append(_step(proc))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait(timeout=60)
    median = {name: statistics.median(v) for name, v in samples.items()}
    base = median["core (b6d18c0)"]
    print(f"training step, batch {args.batch}, {args.threads} thread(s), median of {args.steps} interleaved steps")
    print(f"{'code':<20} {'median s':>9} {'min s':>7} {'max s':>7} {'speedup':>8}")
    for name, v in samples.items():
        print(f"{name:<20} {median[name]:>9.3f} {min(v):>7.3f} {max(v):>7.3f} {base / median[name]:>7.2f}x")
    speedup = base / median["current"]
    print(f"target >= {TARGET_SPEEDUP}x: {'met' if speedup >= TARGET_SPEEDUP else 'NOT met'} ({speedup:.2f}x)")
    import torch

    from vsekit.io import atomic_write_json

    result = {
        "workload": "vse_infty_region_bigru sizes: batch 128, 36x2048 regions, embed 1024, BiGRU 300->1024, GPO both sides, vocab 10k, captions 9..19 tokens",
        "baseline_src": str(args.baseline_src),
        "threads": args.threads,
        "steps": args.steps,
        "warmup": args.warmup,
        "step_seconds": samples,
        "median_seconds": median,
        "speedup_vs_core": {name: base / m for name, m in median.items()},
        "target_speedup": TARGET_SPEEDUP,
        "target_met": speedup >= TARGET_SPEEDUP,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "load_average": os.getloadavg(),
    }
    atomic_write_json(result, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
