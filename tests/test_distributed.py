"""Data-parallel training with real processes (gloo, 2 ranks on the CPU).

* 2 processes × their slices of a global batch give the loss, the gradients and the updated weights of
  1 process with the whole batch (float64), with hardest negatives mined over the global batch, the
  same-image positive mask across ranks, the VSE0 sum during the warm-up, BatchNorm over the global batch,
  and the Dual-Path instance losses.
* :func:`vsekit.training.train` under 2 processes equals the single-process run, and a run stopped
  mid-epoch resumes to the same weights and metrics as an uninterrupted one.
* ``torchrun -m vsekit train`` gives a normal run folder, written once, and the model learns.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vsekit.data import Collator, build_tokenizer
from vsekit.data.factory import build_dataset
from vsekit.distributed import (
    CrossRankBatchNorm,
    Shard,
    convert_batchnorm,
    gather_with_grad,
    reduce_sum,
    restore_batchnorm,
    shard_sizes,
    wrap_ddp,
)
from vsekit.errors import ConfigError
from vsekit.io import LOCK_FILE
from vsekit.losses import ContrastiveLoss, sharded_triplet_hinge_loss, triplet_hinge_loss
from vsekit.models import create_model
from vsekit.training import TrainingForward, build_optimizer, compute_loss, epoch_batches, train

from .conftest import REPO, chance_rsum, tiny_config

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")

WORLD = 2

# A small VSE∞ region + BiGRU + GPO model (the MLP's BatchNorm included), deterministic: no augmentation.
# SGD, not Adam: the bias before the MLP's BatchNorm has a gradient of exactly 0 in exact arithmetic, and
# Adam would turn its rounding noise (1e-17) into steps of ±lr that differ between any two summation orders.
EXACT = [
    "model.embed_size=16", "model.text.word_dim=16", "model.image.size_augment=0", "model.text.augment=0",
    "data.synthetic={num_train: 12, num_val: 4, num_test: 4}", "optim.optimizer=sgd", "optim.lr=0.1",
    "optim.momentum=0.9",
]  # fmt: skip


def _spawn(fn, *args) -> None:
    """Run ``fn(rank, *args)`` in WORLD fresh processes joined in a gloo group."""
    mp.start_processes(_entry, args=(fn, *args), nprocs=WORLD, join=True, start_method="spawn")


def _entry(rank: int, fn, init_file: str, *args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def _gather_check(rank: int) -> None:
    """The autograd all-gather by hand, with uneven slices: rank 0 holds 3 rows, rank 1 two."""
    x = torch.full((3 - rank, 2), float(rank + 1), requires_grad=True)
    g = gather_with_grad(x, Shard(rank, (3, 2)))
    assert g.tolist() == [[1.0, 1.0]] * 3 + [[2.0, 2.0]] * 2
    ((rank + 1) * g.sum()).backward()  # the loss of rank r is (r + 1) × the sum of all gathered rows
    assert torch.equal(x.grad, torch.full_like(x, 3.0))  # 1 + 2: every rank's loss uses every row


def _exact_scenario(rank: int, overrides: list[str], epochs: tuple[int, ...], steps: int, text_ids=None) -> None:
    """2 ranks vs 1 process, side by side in every rank (the reference uses no collective)."""
    cfg = tiny_config(*EXACT, *overrides)
    data = build_dataset(cfg.data, "train")
    tokenizer = build_tokenizer(cfg.model.text, data.captions(), min_count=1)
    torch.manual_seed(0)
    ref = create_model(cfg.model, tokenizer).double().train()
    model = convert_batchnorm(copy.deepcopy(ref))
    assert any(isinstance(m, CrossRankBatchNorm) for m in model.modules())
    ddp = wrap_ddp(TrainingForward(model, cfg), torch.device("cpu"))
    ref_opt, opt = build_optimizer(ref, cfg), build_optimizer(model, cfg)
    loss_fn = ContrastiveLoss.from_config(cfg.loss)
    collate = Collator(tokenizer, ref.image_input, train=True)
    tight = dict(rtol=1e-9, atol=1e-12)
    checked_same_image = False
    for epoch in epochs:
        loss_fn.set_epoch(epoch)
        # 60 captions of 12 images in global batches of 15 (slices of 8 and 7): several captions of an image per batch
        for indices in epoch_batches(len(data), 15, cfg.seed, epoch)[:steps]:
            shard = Shard(rank, shard_sizes(len(indices), WORLD))
            full = collate([data[int(i)] for i in indices])
            full.images = full.images.double()
            checked_same_image |= len(set(full.image_ids.tolist())) < len(indices)
            part = collate([data[int(i)] for i in indices[shard.offset : shard.offset + shard.size]])
            part.images = part.images.double()

            ref_opt.zero_grad()
            ref_loss = compute_loss(ref, full, loss_fn, cfg, "fp32", text_ids=text_ids)
            ref_loss.backward()
            opt.zero_grad()
            share = compute_loss(model, part, loss_fn, cfg, "fp32", forward=ddp, shard=shard, text_ids=text_ids)
            (share * WORLD).backward()
            torch.testing.assert_close(reduce_sum(share.detach()), ref_loss.detach(), **tight)
            for (name, p), q in zip(ref.named_parameters(), model.parameters()):
                if p.grad is None:
                    assert q.grad is None, name
                else:
                    torch.testing.assert_close(q.grad, p.grad, **tight, msg=lambda m, n=name: f"grad {n}: {m}")
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.optim.grad_clip)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            ref_opt.step()
            opt.step()
            for (name, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
                torch.testing.assert_close(b, a, **tight, msg=lambda m, n=name: f"{n}: {m}")
    assert checked_same_image
    assert type(restore_batchnorm(model).image_encoder.mlp.bns[0]) is torch.nn.BatchNorm1d


def _exact_worker(rank: int) -> None:
    _gather_check(rank)
    # hardest negatives with other captions of the same image as positives, after a one-epoch VSE0 warm-up
    _exact_scenario(rank, ["loss.negatives=hardest", "loss.warmup_epochs=1", "loss.same_image_positives=true"], (0, 1), 2)
    # hardest negatives (diagonal positives only) plus the Dual-Path instance losses (per-sample means)
    _exact_scenario(rank, ["loss.negatives=hardest", "model.instance_classes=12", "loss.instance_image_weight=1.0",
                           "loss.instance_text_weight=0.5"], (1,), 3)  # fmt: skip
    # the softmax with captions that read the same as positives (text ids shared by every 7th caption, so
    # batches of 15 hold several such pairs, across the two slices too)
    _exact_scenario(rank, ["loss.negatives=softmax", "loss.same_text_positives=true"], (0,), 2, torch.arange(60) % 7)


def test_two_processes_equal_one_process_with_the_global_batch(tmp_path):
    _spawn(_exact_worker, str(tmp_path / "init"))


def test_shares_of_the_sharded_loss_sum_to_the_global_loss():
    torch.manual_seed(0)
    img, cap = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    ids = torch.tensor([0, 1, 0, 2, 1, 3, 3])
    for negatives in ("hardest", "sum", "softmax"):
        for image_ids in (None, ids):
            expected = triplet_hinge_loss(img @ cap.t(), 0.2, negatives, image_ids=image_ids, temperature=0.3)
            for world in (1, 2, 3):
                total = 0
                for rank in range(world):
                    s = Shard(rank, shard_sizes(7, world))
                    lo, hi = s.offset, s.offset + s.size
                    local_ids = None if image_ids is None else image_ids[lo:hi]
                    total = total + sharded_triplet_hinge_loss(
                        img[lo:hi] @ cap.t(), img @ cap[lo:hi].t(), lo, 0.2, negatives, local_ids, image_ids, 0.3
                    )
                torch.testing.assert_close(total, expected, rtol=1e-12, atol=1e-12)
    assert shard_sizes(10, 4) == (3, 3, 2, 2)
    with pytest.raises(ConfigError, match="batch_size"):
        shard_sizes(1, 2)




# ----------------------------------------------------------------------------------------------
# train() under 2 processes

LOOP = [
    "model.embed_size=32", "model.text.word_dim=32", "batch_size=33", "eval_batch_size=64", "epochs=2",
    "data.synthetic={num_train: 40, num_val: 20, num_test: 10}", "loss.negatives=hardest", "loss.warmup_epochs=1",
    "loss.same_image_positives=true",
]  # fmt: skip
# deterministic, and SGD (see EXACT)
NO_AUGMENT = ["model.image.size_augment=0", "model.text.augment=0", "optim.optimizer=sgd", "optim.lr=0.05", "optim.momentum=0.9"]


def _loop_worker(rank: int, root: str) -> None:
    root = Path(root)
    cfg = tiny_config(*LOOP)  # with size and text augmentation: per-rank draws must resume exactly
    full = train(cfg, root / "full", progress_stream=None)
    partial = train(cfg, root / "resumed", progress_stream=None, max_steps=9)  # mid-epoch 2 (6 steps per epoch)
    assert not partial.completed
    resumed = train(cfg, root / "resumed", progress_stream=None)
    assert resumed.completed
    # every rank returns the same result
    torch.save({"full": full.history, "resumed": resumed.history}, root / f"histories{rank}.pt")
    train(tiny_config(*LOOP, *NO_AUGMENT), root / "ddp_exact", progress_stream=None, max_steps=3)


def _load_history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _untimed(records):
    drop = {"train_seconds", "pairs_per_second", "val_seconds"}
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def test_train_under_ddp_resumes_exactly_and_matches_one_process(tmp_path):
    _spawn(_loop_worker, str(tmp_path / "init"), str(tmp_path))
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 12
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    full, resumed = _load_history(tmp_path / "full"), _load_history(tmp_path / "resumed")
    assert _untimed(full) == _untimed(resumed)
    assert [r["negatives"] for r in full] == ["sum", "hardest"]
    h0, h1 = (torch.load(tmp_path / f"histories{r}.pt", weights_only=False) for r in range(WORLD))
    assert h0 == h1 and _untimed(h0["full"]) == _untimed(full)

    # without augmentation, train() on 2 processes is train() on 1 (global batches of 33 in slices of 17 and
    # 16, BatchNorm over the global batch), to float32 rounding. A few steps only: in float32 this small
    # model already drifts by 1e-4 after 4 steps between 1 and 2 BLAS threads of a single process (the
    # float64 test above is the exact check)
    train(tiny_config(*LOOP, *NO_AUGMENT), tmp_path / "single", progress_stream=None, max_steps=3)
    ddp = torch.load(tmp_path / "ddp_exact" / "last.pt", weights_only=True)
    one = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    assert ddp["step"] == one["step"] == 3 and ddp["batch_in_epoch"] == 3
    for key, value in one["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
    assert ddp["epoch_loss"][1] == one["epoch_loss"][1] == 3
    assert ddp["epoch_loss"][0] == pytest.approx(one["epoch_loss"][0], rel=1e-6)  # the global batches' loss


# ----------------------------------------------------------------------------------------------
# the command line under torchrun


@pytest.mark.learning
def test_torchrun_cli_trains_and_writes_the_run_folder_once(tmp_path, learning_seed, measured):
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}",
        "-m", "vsekit", "train", "--preset", "demo_gpo", "--run-dir", str(run), "--quiet",
        "model.embed_size=64", "model.text.word_dim=32", "data.synthetic={num_train: 200, num_val: 100, num_test: 10}",
        "batch_size=50", "eval_batch_size=128", "epochs=3", "optim.lr=3e-3", f"seed={learning_seed}",
        "device=cpu",  # gloo on CPUs: two processes need no two GPUs (benchmarks/gpu_check.sh runs NCCL)
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0 alone logs
    assert proc.stdout.count("best validation rsum") == 1, proc.stdout
    assert proc.stdout.count("epoch 1/3:") == 1 and "2 processes, 50 pairs per global batch" in proc.stdout
    assert proc.stderr.count("epoch 1/3 [") == 0  # --quiet: no progress bar from any rank
    for name in ("config.yaml", "metrics.jsonl", "best.pt", "last.pt", "curves.png"):
        assert (run / name).is_file(), name
    hist = _load_history(run)
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert [r["step"] for r in hist] == [20, 40, 60]  # 1000 captions in global batches of 50 per epoch
    # 91..130 over 3 kernels x 3 seeds (benchmarks/learning_spread.py)
    assert measured("best_rsum", max(r["val_rsum"] for r in hist)) > 2 * chance_rsum(100), [r["val_rsum"] for r in hist]
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE, "best.pt", "config.yaml", "curves.png", "last.pt", "metrics.jsonl"]
