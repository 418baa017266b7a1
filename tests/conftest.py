"""Shared fixtures: tiny configs on the built-in data, and the location of the shared RSICD data."""

from __future__ import annotations

from pathlib import Path

import pytest

from vsekit.config import TrainConfig, apply_overrides
from vsekit.presets import get_preset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RSICD = SHARED / "datasets" / "rsicd"

TINY = [
    "model.embed_size=64",
    "data.synthetic={num_train: 400, num_val: 100, num_test: 100}",
    "model.text.word_dim=32",
    "batch_size=50",
    "eval_batch_size=128",
]


def tiny_config(*overrides: str, preset: str = "demo_gpo") -> TrainConfig:
    """A config that trains in seconds on a small built-in dataset."""
    return apply_overrides(get_preset(preset), [*TINY, *overrides])


@pytest.fixture
def rsicd() -> Path:
    if not (RSICD / "dataset_rsicd.json").is_file():
        pytest.skip("the shared RSICD data is not present (../shared/datasets/rsicd)")
    return RSICD
