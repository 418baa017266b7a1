"""Shared fixtures: tiny configs on the built-in data, and the location of the shared RSICD data."""

from __future__ import annotations

import os
from math import comb
from pathlib import Path

import pytest
import torch

from vsekit.config import TrainConfig, apply_overrides
from vsekit.presets import get_preset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RSICD = SHARED / "datasets" / "rsicd"

# device=cpu: the suite's exact expectations (bit-identical resumes, DDP equal to one process, learning
# thresholds) are CPU facts; on a GPU, cuDNN picks nondeterministic kernels and TF32. The CUDA paths are
# tested against the CPU in tests/test_cuda.py, and benchmarks/gpu_check.sh trains through the CLI on CUDA.
TINY = [
    "device=cpu",
    "model.embed_size=64",
    "data.synthetic={num_train: 400, num_val: 100, num_test: 100}",
    "model.text.word_dim=32",
    "batch_size=50",
    "eval_batch_size=128",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--learning-seed", type=int, default=0,
        help="training seed of the tests marked 'learning' (benchmarks/learning_spread.py sweeps it to measure "
        "how far their results move with the seed and the CPU kernels)",
    )  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n N``), give each worker its share of the cores: torch's default of one thread per
    core in every worker oversubscribes the machine N times (on a 16-core GPU machine, ``-n 12`` slowed the CPU
    training tests about tenfold, past their timeouts). ``OMP_NUM_THREADS`` carries the share to the CLI
    subprocesses the tests start."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def tiny_config(*overrides: str, preset: str = "demo_gpo") -> TrainConfig:
    """A config that trains in seconds on a small built-in dataset."""
    return apply_overrides(get_preset(preset), [*TINY, *overrides])


def chance_rsum(n_images: int, k: int = 5) -> float:
    """Expected rsum of a random ranking of ``n_images`` images with ``k`` captions each: i2t R@K =
    1 - C(kN-k, K) / C(kN, K) (any of the image's k captions in the top K of kN), t2i R@K = K / N."""
    n = n_images * k
    i2t = sum(100.0 * (1 - comb(n - k, r) / comb(n, r)) for r in (1, 5, 10))
    t2i = sum(100.0 * r / n_images for r in (1, 5, 10))
    return i2t + t2i


@pytest.fixture
def no_tf32():
    """Full float32 products on CUDA (no TF32 in matmuls or cuDNN), so CUDA and CPU agree to float32 rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def rsicd() -> Path:
    if not (RSICD / "dataset_rsicd.json").is_file():
        pytest.skip("the shared RSICD data is not present (../shared/datasets/rsicd)")
    return RSICD


@pytest.fixture(scope="session")
def learning_seed(request) -> int:
    """The training seed of a learning test: 0 unless ``--learning-seed`` says otherwise."""
    return request.config.getoption("--learning-seed")


@pytest.fixture
def measured(record_property):
    """``measured(name, value)`` records a learning test's result (``record_property``, so it reaches
    ``--junitxml``) before the test asserts on it; benchmarks/learning_spread.py reads these to set the
    thresholds from the spread over seeds and kernels. Returns the value."""

    def record(name: str, value: float) -> float:
        record_property(name, float(value))
        return value

    return record
