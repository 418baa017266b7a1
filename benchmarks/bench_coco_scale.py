"""Train on a COCO-size precomputed split on disk: peak resident memory and training steps/s.

Usage::

    df -h runs/                                       # the full size needs ~17 GB free
    OMP_NUM_THREADS=1 python benchmarks/bench_coco_scale.py [--images 113287] [--steps 20] \\
        [--workers 2] [--root runs/bench_coco_scale] [--delete]

It generates (once; an existing complete folder is reused) the SCAN ``*_precomp`` layout of COCO's
training split: ``train_ims.npy`` with ``--images`` × 36 × 2048 float16 region features (113,287
images: 16.7 GB; float32 would be 33 GB) written chunk by chunk (never held in memory), and
``train_caps.txt`` with 5 generated captions per image (8..18 words from a 10,000-word vocabulary),
plus a 1,000-image ``dev`` split. It then trains the ``vse_infty_region_bigru`` preset (region
features + BiGRU + GPO, batch 128, embed 1024) on it through the normal :func:`vsekit.train` path
(vocabulary building over all captions, memory-mapped features with one sorted read per batch,
DataLoader workers) for ``--warmup`` + ``--steps`` optimisation steps, in a subprocess, and reports:

* peak RSS (``getrusage`` max resident set) of the training process and of its DataLoader workers,
  against the 4 GB target (loading the array would need 16.7 GB, 33 GB as float32);
* training steps/s (and pairs/s) over the timed steps, data loading included.

It prints a table and writes JSON to ``benchmarks/results/bench_coco_scale.json``. ``--delete``
removes the generated folder afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COCO_TRAIN_IMAGES = 113287
TARGET_RSS_GB = 4.0
VOCAB_WORDS = 10000


def _captions(rng: np.random.Generator, n_images: int, k: int = 5) -> str:
    """``n_images * k`` captions of 8..18 words, Zipf-distributed over VOCAB_WORDS words."""
    ranks = np.arange(1, VOCAB_WORDS + 1)
    p = 1.0 / ranks
    p /= p.sum()
    lengths = rng.integers(8, 19, size=n_images * k)
    words = rng.choice(VOCAB_WORDS, size=int(lengths.sum()), p=p)
    ends = np.cumsum(lengths)
    return "".join(" ".join(f"w{w}" for w in words[e - n : e]) + "\n" for n, e in zip(lengths, ends))


def generate_split(root: Path, split: str, n_images: int, regions: int, dim: int, dtype: str, seed: int) -> None:
    """Write ``{split}_ims.npy`` chunk by chunk (memory bounded by one chunk) and ``{split}_caps.txt``."""
    root.mkdir(parents=True, exist_ok=True)
    ims = root / f"{split}_ims.npy"
    arr = np.lib.format.open_memmap(ims, mode="w+", dtype=np.dtype(dtype), shape=(n_images, regions, dim))
    offset = arr.offset
    del arr  # only the header and the file size came from open_memmap; the data is written below
    rng = np.random.default_rng(seed)
    chunk = max(1, (64 << 20) // (regions * dim * 4))  # ~64 MB of float32 per chunk
    with open(ims, "r+b") as f:
        f.seek(offset)
        for start in range(0, n_images, chunk):
            n = min(chunk, n_images - start)
            block = rng.standard_normal((n, regions, dim), dtype=np.float32)
            np.maximum(block, 0, out=block)  # non-negative like ReLU-ed detector features
            f.write(block.astype(dtype).tobytes())
    with open(root / f"{split}_caps.txt", "w", encoding="utf-8") as f:
        for start in range(0, n_images, 20000):
            f.write(_captions(rng, min(20000, n_images - start)))


def ensure_data(root: Path, images: int, regions: int, dim: int, dtype: str) -> dict:
    """Generate the data unless ``root`` already holds a complete folder with the same parameters."""
    spec = {"images": images, "regions": regions, "dim": dim, "dtype": dtype, "dev_images": 1000}
    marker = root / "COMPLETE.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return {"generated": False, "seconds": 0.0}
    need = images * regions * dim * np.dtype(dtype).itemsize
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < need * 1.05:
        raise SystemExit(f"{root}: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free (use --images N)")
    marker.unlink(missing_ok=True)
    start = time.perf_counter()
    generate_split(root, "train", images, regions, dim, dtype, seed=0)
    generate_split(root, "dev", 1000, regions, dim, dtype, seed=1)
    marker.write_text(json.dumps(spec))
    return {"generated": True, "seconds": round(time.perf_counter() - start, 1)}


def _worker(args: argparse.Namespace) -> None:
    """Train through vsekit.train for warmup + steps steps; print a JSON line of measurements."""
    import torch

    from vsekit.config import apply_overrides
    from vsekit.presets import get_preset
    from vsekit.training import step as train_step
    from vsekit.training import train

    torch.set_num_threads(args.threads)
    starts: list[float] = []
    compute_loss = train_step.compute_loss

    def timed_compute_loss(*a, **kw):  # marks the start of each step's compute (after its batch arrived)
        starts.append(time.perf_counter())
        return compute_loss(*a, **kw)

    train_step.compute_loss = timed_compute_loss  # what the training step calls
    cfg = apply_overrides(
        get_preset("vse_infty_region_bigru"),
        ["data.kind=precomp", f"data.path={args.root}", "data.val_split=dev", "data.val_max_images=1000",
         f"batch_size={args.batch}", f"workers={args.workers}", "device=cpu", f"precision={args.precision}"],
    )  # fmt: skip
    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    train(cfg, run_dir, max_steps=args.warmup + args.steps, progress_stream=None)
    total = time.perf_counter() - t0
    timed = starts[args.warmup :]
    end = time.perf_counter()
    steps_per_s = len(timed) / (end - timed[0])  # last step ends before train() writes last.pt
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({
        "steps_timed": len(timed),
        "steps_per_second": steps_per_s,
        "pairs_per_second": steps_per_s * args.batch,
        "setup_and_warmup_seconds": round(timed[0] - t0, 2),
        "train_call_seconds": round(total, 2),
        "peak_rss_gb": usage.ru_maxrss / 1024**2,  # Linux: KiB
        "peak_rss_workers_gb": children.ru_maxrss / 1024**2,
    }), flush=True)  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=COCO_TRAIN_IMAGES, help="training images (COCO: 113287)")
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "bench_coco_scale" / "data")
    parser.add_argument("--steps", type=int, default=20, help="timed optimisation steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--delete", action="store_true", help="delete the generated folder afterwards")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_coco_scale.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0

    data = ensure_data(args.root, args.images, args.regions, args.dim, args.dtype)
    file_gb = (args.root / "train_ims.npy").stat().st_size / 1e9
    run_dir = args.root.parent / "run"
    cmd = [sys.executable, __file__, "--worker", "--root", str(args.root), "--run-dir", str(run_dir),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
           "--workers", str(args.workers), "--threads", str(args.threads), "--precision", args.precision]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"training subprocess failed (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    full_gb = args.images * args.regions * args.dim
    row = {
        "images": args.images,
        "feature_file_gb": round(file_gb, 2),
        "full_load_gb": {"float16": round(full_gb * 2 / 1e9, 1), "float32": round(full_gb * 4 / 1e9, 1)},
        **result,
        "target_peak_rss_gb": TARGET_RSS_GB,
        "target_met": result["peak_rss_gb"] <= TARGET_RSS_GB and result["peak_rss_workers_gb"] <= TARGET_RSS_GB,
        "data": data,
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "run_dir", "out", "root")},
        "root": str(args.root),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }
    print(f"COCO-scale training: {args.images} images × {args.regions} × {args.dim} {args.dtype} "
          f"({file_gb:.1f} GB on disk; loading it: {row['full_load_gb']['float16']} GB fp16 / {row['full_load_gb']['float32']} GB fp32)")  # fmt: skip
    print(f"{'peak RSS, training process':<34} {result['peak_rss_gb']:>7.2f} GB  (target <= {TARGET_RSS_GB} GB)")
    print(f"{'peak RSS, largest DataLoader worker':<34} {result['peak_rss_workers_gb']:>7.2f} GB")
    print(f"{'training steps/s (batch ' + str(args.batch) + ')':<34} {result['steps_per_second']:>7.3f}     ({result['pairs_per_second']:.0f} pairs/s)")  # fmt: skip
    print(f"{'setup + warm-up':<34} {result['setup_and_warmup_seconds']:>7.1f} s")
    print(f"target peak RSS <= {TARGET_RSS_GB} GB: {'met' if row['target_met'] else 'NOT met'}")
    from vsekit.io import atomic_write_json

    atomic_write_json(row, args.out)
    print(f"wrote {args.out}")
    if args.delete:
        shutil.rmtree(args.root.parent, ignore_errors=True)
        print(f"deleted {args.root.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
