"""``cuda_graphs=true``: the bucketing, the static buffers, the warm-up and restore, and the config errors, on a CPU.

The step at bucketed static shapes runs eagerly on a CPU (nothing is captured), through the same buffers, copy-in,
warm-up and restore as on CUDA; these tests check that it trains exactly as the ordinary step does. The capture
itself needs a GPU (benchmarks/gpu_check.sh compares the two steps there).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import tiny_config
from vsekit.configure import load_config, validate
from vsekit.data import Batch
from vsekit.errors import ConfigError
from vsekit.training.distributed import DistContext
from vsekit.training.graphs import Buckets, Snapshot, StaticBatch, bucket_width, pad_width
from vsekit.training.loop import start_run

BUCKET_LISTS = st.lists(st.integers(1, 200), min_size=1, max_size=6, unique=True).map(sorted)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 1000), BUCKET_LISTS)
def test_a_length_lands_in_the_smallest_bucket_that_holds_it(length, buckets):
    width = bucket_width(length, buckets)
    assert width >= length
    if length <= buckets[-1]:
        assert width in buckets
        assert all(b < length for b in buckets if b < width)  # no smaller bucket holds it
    else:  # past the last bucket: the next multiple of the last
        assert width % buckets[-1] == 0 and width - buckets[-1] < length


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 500), st.integers(1, 500), BUCKET_LISTS)
def test_bucket_widths_grow_with_the_length(a, b, buckets):
    lo, hi = sorted((a, b))
    assert bucket_width(lo, buckets) <= bucket_width(hi, buckets)


def test_bucket_examples():
    buckets = [16, 24, 32, 48, 64]
    assert [bucket_width(n, buckets) for n in (1, 16, 17, 33, 64, 65, 128, 129)] == [16, 16, 24, 48, 64, 128, 128, 192]
    assert bucket_width(7, []) == 7  # no buckets: as collated
    with pytest.raises(ValueError):
        bucket_width(0, buckets)


def _batch(lengths: list[int], set_lengths: list[int], dim: int = 3, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    width, sets = max(lengths), max(set_lengths)
    captions = torch.randint(5, 50, (len(lengths), width), generator=gen)
    images = torch.rand(len(lengths), sets, dim, generator=gen)
    for i, (n, k) in enumerate(zip(lengths, set_lengths)):
        captions[i, n:] = 0
        images[i, k:] = 0
    n = len(lengths)
    return Batch(images, torch.tensor(set_lengths), captions, torch.tensor(lengths), torch.arange(n), torch.arange(n) + 100)


def test_static_buffers_hold_each_batch_padded():
    buckets = Buckets((8, 16), (6,), pad_id=0)
    first, second = _batch([3, 7, 5], [4, 6, 2], seed=1), _batch([2, 4, 1], [3, 1, 5], seed=2)
    shape = buckets.shape_of(first)
    assert shape == (3, 8, 6) == buckets.shape_of(second)
    static = StaticBatch(first, shape, pad_id=0)
    tensors = [static.batch.images, static.batch.captions]
    for batch in (first, second):  # the second batch is narrower: what the first left past its width is cleared
        static.copy_in(batch)
        padded = buckets.pad(batch)
        for name in ("images", "image_lengths", "captions", "caption_lengths", "image_ids", "caption_ids"):
            assert torch.equal(getattr(static.batch, name), getattr(padded, name)), name
    assert static.batch.images is tensors[0] and static.batch.captions is tensors[1]  # the same buffers throughout
    assert torch.equal(pad_width(first.captions, 8, 0)[:, :7], first.captions)


def _runs(tmp_path: Path, *overrides: str, device: str = "cpu"):
    """Two identical runs of a tiny region + BiGRU model on the built-in data: the second steps at bucketed
    static shapes (eager on a CPU: what a CUDA graph would replay; captured on CUDA)."""
    cfg = tiny_config(
        "data.kind=synthetic", "data.val_split=val", "data.test_split=test", "data.val_max_images=null",
        "data.vocab_min_count=1", "model.image.img_dim=64", *overrides, preset="vse_infty_region_bigru",
    )  # fmt: skip
    validate(cfg)  # cuda_graphs stays off here: a CPU config with it on is refused (tested below)
    runs = []
    for name in ("plain", "graphed"):
        run = start_run(cfg, tmp_path / name, DistContext(), torch.device(device), resume=True, log=None,
                        progress_stream=None, max_steps=None, datasets=None)  # fmt: skip
        runs.append(run)
    plain, graphed = runs
    graphed.cfg.graph_caption_buckets, graphed.cfg.graph_set_buckets = [13, 40], [50]
    graphed.step.graphs = graphed.step.graphed_steps(torch.device(device))
    graphed.step.graphs.warmup = 2
    return plain, graphed


def _batches(run, n: int) -> list[Batch]:
    loader = torch.utils.data.DataLoader(run.train_set, batch_size=run.cfg.batch_size, shuffle=False, collate_fn=run.collator)
    return [b for b, _ in zip(loader, range(n))]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_bucket_padding_leaves_the_losses_and_weights_unchanged(tmp_path, optimizer):
    """Without augmentation the padded step computes the same losses and updates as the ordinary one, step after
    step: the padding is masked, and the warm-up before each new shape leaves no trace (weights, BatchNorm
    statistics, optimizer state and RNG put back)."""
    plain, graphed = _runs(tmp_path, "model.image.size_augment=0", "model.text.augment=0", f"optim.optimizer={optimizer}")
    batches = _batches(plain, 6)
    assert {graphed.step.graphs.shape_of(b)[1] for b in batches} == {40}  # every caption padded past its width
    assert all(b.captions.shape[1] < 40 for b in batches)
    for i, batch in enumerate(batches):
        weight = 0.5 if i == 3 else None  # the unfreeze ramp's loss weight
        a, b = plain.step(batch, i, None, weight), graphed.step(batch, i, None, weight)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert graphed.step.graphs.captures == 1
    for (name, x), y in zip(plain.model.state_dict().items(), graphed.model.state_dict().values()):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5, msg=name)


def test_augmented_steps_draw_the_same_as_the_ordinary_step_on_the_padded_batch(tmp_path):
    """With augmentation the draws cover the padded width, so the reference is the ordinary step on the padded
    batch: the same draws (the warm-up's are undone) and the same losses, also across two shapes."""
    plain, graphed = _runs(tmp_path)
    buckets = graphed.step.graphs.buckets
    batches = _batches(plain, 5)
    batches[2] = Batch(*(t[:20] for t in (batches[2].images, batches[2].image_lengths, batches[2].captions,
                                          batches[2].caption_lengths, batches[2].image_ids, batches[2].caption_ids)))  # fmt: skip
    torch.manual_seed(5)
    expected = [plain.step(buckets.pad(b), i, None, None) for i, b in enumerate(batches)]
    torch.manual_seed(5)
    got = [graphed.step(b, i, None, None) for i, b in enumerate(batches)]
    torch.testing.assert_close(torch.stack(got), torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert graphed.step.graphs.captures == 2  # batch sizes 50 and 20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the capture needs CUDA")
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_cuda_graph_replays_train_as_the_eager_step(tmp_path, optimizer, no_tf32):
    """On CUDA: captured (AdamW: the update inside the graph; SGD: after the replay) and replayed over two
    shapes and a learning-rate change, the graphed step's losses and weights follow the ordinary step's."""
    plain, graphed = _runs(tmp_path, "model.image.size_augment=0", "model.text.augment=0", f"optim.optimizer={optimizer}",
                           device="cuda")  # fmt: skip
    batches = [b.to("cuda") for b in _batches(plain, 6)]
    batches[4] = Batch(*(t[:20] for t in (batches[4].images, batches[4].image_lengths, batches[4].captions,
                                          batches[4].caption_lengths, batches[4].image_ids, batches[4].caption_ids)))  # fmt: skip
    for i, batch in enumerate(batches):
        if i == 3:
            for run in (plain, graphed):
                for group in run.optimizer.param_groups:
                    group["lr"] *= 0.1
        a, b = plain.step(batch, i, None, None), graphed.step(batch, i, None, None)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert graphed.step.graphs.captures == 2 and all(s.graph is not None for s in graphed.step.graphs.shapes.values())
    for (name, x), y in zip(plain.model.state_dict().items(), graphed.model.state_dict().values()):
        torch.testing.assert_close(y, x, rtol=1e-3, atol=1e-4, msg=name)


def test_a_new_mode_drops_the_shapes_of_the_previous_one(tmp_path):
    _, graphed = _runs(tmp_path, "model.image.size_augment=0", "model.text.augment=0")
    batch = _batches(graphed, 1)[0]
    graphed.step(batch, 0, None, None)
    graphed.model.image_encoder.fc.weight.requires_grad_(False)  # a module frozen: another set of gradients
    graphed.step(batch, 1, None, None)
    assert graphed.step.graphs.captures == 2 and len(graphed.step.graphs.shapes) == 1


def test_snapshot_restores_weights_optimizer_state_and_rng():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snap = Snapshot(model, opt, torch.device("cpu"))
    expected_draw = torch.rand(3)
    for _ in range(2):
        model(torch.rand(5, 4)).sum().backward()
        opt.step()
    snap.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(float(v.abs().sum()) == 0 for s in opt.state.values() for v in s.values())  # a fresh state, zeroed
    assert torch.equal(torch.rand(3), expected_draw)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["device=cpu"], "needs a CUDA device"),
        (["device=cuda", "compile=true"], "compile=true"),
        (["device=cuda", "precision=fp16"], "precision=bf16"),
        (["device=cuda", "model.text.kind=transformer", "model.text.transformer_path=/nowhere"], "model.text.kind"),
        (["device=cuda", "loss.same_text_positives=true"], "same_text_positives"),
        (["device=cuda", "graph_caption_buckets=[]"], "at least one caption width"),
        (["device=cuda", "graph_caption_buckets=[32, 16]"], "increasing positive widths"),
        (["device=cuda", "graph_set_buckets=[0, 36]"], "increasing positive widths"),
    ],
)
def test_what_a_captured_step_cannot_do_is_a_one_line_config_error(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(preset="vse_infty_region_bigru", overrides=["cuda_graphs=true", *overrides], require_data=False)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_backbone_size_augmentation_cannot_be_bucketed():
    with pytest.raises(ConfigError, match="size_augment=0"):
        load_config(preset="vse_infty_grid_bigru", overrides=["cuda_graphs=true", "device=cuda"], require_data=False)
    cfg = load_config(preset="vse_infty_grid_bigru", overrides=["cuda_graphs=true", "device=cuda",
                                                                 "model.image.size_augment=0"], require_data=False)  # fmt: skip
    assert cfg.cuda_graphs and cfg.graph_caption_buckets == [16, 24, 32, 48, 64]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_training_with_cuda_graphs_without_cuda_is_a_one_line_error(tmp_path):
    import vsekit

    cfg = tiny_config("device=auto", "cuda_graphs=true")
    with pytest.raises(ConfigError, match="needs a CUDA device, got cpu") as info:
        vsekit.train(cfg, tmp_path / "run", progress_stream=None)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "last.pt").exists()
