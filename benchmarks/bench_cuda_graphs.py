"""``bench_train_step.py --cuda-graphs``: the current training step against the same step with ``cuda_graphs=true``.

Both steps run in one process on one GPU: the ``vse_infty_region_bigru`` sizes of ``bench_train_step.py`` (batch
``--batch``, 36×2048 regions, embed 1024, BiGRU, GPO both sides, AdamW, clipping at 2), each on its own copy of the
same model, on the same batch. After ``--warmup`` steps each (the graphed step captures its graph in its first),
they are stepped alternately and timed between synchronisations; the result is the median of each and the ratio
of their steps/s. Then two fresh copies train ``--loss-steps`` steps on batches of varying caption lengths with
augmentation off (its draws cover the padded width) and TF32 off, one with each step, and their losses are
compared step by step.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP = 2.0
LOSS_RTOL = 1e-3


def _setup(cfg, vocab_size: int, device, seed: int = 0):
    """A model of ``cfg`` with its optimizer and training step (one process, fp32, no weight average)."""
    import torch

    from vsekit.losses import ContrastiveLoss
    from vsekit.models import create_model
    from vsekit.text.vocab import Vocabulary
    from vsekit.training.distributed import DistContext
    from vsekit.training.optim import build_optimizer
    from vsekit.training.step import TrainingStep

    torch.manual_seed(seed)
    vocab = Vocabulary.from_words(f"w{i}" for i in range(vocab_size))
    model = create_model(cfg.model, vocab).to(device).train()
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    loss_fn = ContrastiveLoss.from_config(cfg.loss)
    return TrainingStep(model, cfg, optimizer, scaler, None, loss_fn, None, DistContext())


def region_batch(size: int, vocab_size: int, longest: int, device, seed: int):
    """Region features (36×2048, all present) and captions of 9..``longest`` tokens (also the batch of
    ``bench_train_step.py``)."""
    import numpy as np
    import torch

    from vsekit.data.collate import Batch

    rng = np.random.default_rng(seed)
    lengths = rng.integers(9, longest + 1, size=size)
    ids = np.zeros((size, int(lengths.max())), dtype=np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(5, vocab_size - 1, size=n)
    return Batch(
        images=torch.from_numpy(np.maximum(rng.standard_normal((size, 36, 2048), dtype=np.float32), 0)),
        image_lengths=torch.full((size,), 36, dtype=torch.int64),
        captions=torch.from_numpy(ids),
        caption_lengths=torch.from_numpy(lengths.astype(np.int64)),
        image_ids=torch.arange(size),
        caption_ids=torch.arange(size),
    ).to(device)


def _configs(batch: int):
    from vsekit.presets import get_preset

    cfg = get_preset("vse_infty_region_bigru")
    cfg.batch_size, cfg.device = batch, "cuda"
    graphed = copy.deepcopy(cfg)
    graphed.cuda_graphs = True
    return cfg, graphed


def _timed(step, batch, i: int) -> float:
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    step(batch, i, None, None)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def time_steps(args: argparse.Namespace, device) -> dict[str, list[float]]:
    """Interleaved step times of the current and the graphed step on one batch."""
    cfg, graphed_cfg = _configs(args.batch)
    steps = {"current": _setup(cfg, args.vocab, device), "cuda_graphs=true": _setup(graphed_cfg, args.vocab, device)}
    batch = region_batch(args.batch, args.vocab, 19, device, seed=0)
    for i in range(args.warmup):
        for step in steps.values():
            step(batch, i, None, None)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.steps):
        for name, step in steps.items():
            samples[name].append(_timed(step, batch, args.warmup + i))
    return samples


def compare_losses(args: argparse.Namespace, device) -> list[tuple[float, float]]:
    """``(current loss, graphed loss)`` of each of ``--loss-steps`` steps from the same start, augmentation off."""
    import torch

    cfg, graphed_cfg = _configs(args.batch)
    for c in (cfg, graphed_cfg):
        c.model.image.size_augment = c.model.text.augment = 0.0
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        current, graphed = _setup(cfg, args.vocab, device), _setup(graphed_cfg, args.vocab, device)
        pairs = []
        for i in range(args.loss_steps):
            batch = region_batch(args.batch, args.vocab, 12 + i % 20, device, seed=100 + i)  # widths 12..31: several buckets
            pairs.append((float(current(batch, i, None, None).detach()), float(graphed(batch, i, None, None).detach())))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    return pairs


def run_graph_comparison(args: argparse.Namespace) -> int:
    """The ``--cuda-graphs`` mode of ``bench_train_step.py``; refuses in one line without a CUDA device."""
    sys.path.insert(0, str(REPO / "src"))
    import torch

    if not args.device.startswith("cuda") or not torch.cuda.is_available():
        raise SystemExit(f"--cuda-graphs: needs a CUDA device (--device cuda on a machine with a GPU; got --device "
                         f"{args.device}, CUDA {'available' if torch.cuda.is_available() else 'not available'}); nothing was measured")  # fmt: skip
    device = torch.device(args.device)
    samples = time_steps(args, device)
    median = {name: statistics.median(v) for name, v in samples.items()}
    speedup = median["current"] / median["cuda_graphs=true"]
    pairs = compare_losses(args, device)
    worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in pairs)
    print(f"training step on {torch.cuda.get_device_name(device)}, batch {args.batch}, median of {args.steps} interleaved steps")
    for name, v in samples.items():
        print(f"{name:<18} {median[name] * 1e3:>8.2f} ms  ({min(v) * 1e3:.2f}..{max(v) * 1e3:.2f})  {1 / median[name]:>7.1f} steps/s")
    print(f"speedup {speedup:.2f}x; target >= {TARGET_SPEEDUP}x: {'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}")
    print(f"losses over {len(pairs)} steps (augmentation and TF32 off): largest relative difference {worst:.2e} "
          f"({'equal' if worst <= LOSS_RTOL else 'NOT equal'} at rtol {LOSS_RTOL:g}); first {pairs[0]}, last {pairs[-1]}")  # fmt: skip
    from vsekit.io import atomic_write_json

    out = args.out or REPO / "benchmarks" / "results" / "bench_train_step_cuda_graphs.json"
    atomic_write_json({
        "workload": f"vse_infty_region_bigru sizes: batch {args.batch}, 36x2048 regions, embed 1024, BiGRU, GPO both sides, "
                    f"vocab {args.vocab}, captions 9..19 tokens (timing)",
        "device_name": torch.cuda.get_device_name(device), "steps": args.steps, "warmup": args.warmup,
        "step_seconds": samples, "median_seconds": median, "speedup": speedup, "target_speedup": TARGET_SPEEDUP,
        "losses": pairs, "largest_relative_loss_difference": worst, "loss_rtol": LOSS_RTOL,
        "torch": torch.__version__, "python": platform.python_version(),
    }, out)  # fmt: skip
    print(f"wrote {out}")
    return 0
