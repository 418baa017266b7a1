"""Tests of the synthetic pooling-pattern experiment (benchmarks/pooling_patterns.py)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "pooling_patterns.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("pooling_patterns", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pp = _load_script()


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("pattern", pp.PATTERNS)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 9, 10, 11, 20, 57, 120])
def test_true_weights_sum_to_one_and_are_non_increasing(pattern: str, n: int) -> None:
    theta = pp.true_weights(pattern, n)
    assert theta.shape == (n,)
    assert theta.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (theta >= 0).all()
    assert (theta[1:] <= theta[:-1] + 1e-7).all()


def test_true_weights_hand_computed() -> None:
    assert pp.true_weights("A", 4).tolist() == pytest.approx([0.25] * 4)
    assert pp.true_weights("M-1", 4).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert pp.true_weights("M-10", 4).tolist() == pytest.approx([0.25] * 4)  # N < 10: average
    assert pp.true_weights("M-10", 12).tolist() == pytest.approx([0.1] * 10 + [0.0] * 2)
    assert pp.true_weights("T-50%", 4).tolist() == pytest.approx([0.5, 0.5, 0, 0])
    assert pp.true_weights("T-50%", 5).tolist() == pytest.approx([1 / 3] * 3 + [0, 0])  # ceil(5/2) = 3
    assert pp.true_weights("L", 4).tolist() == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert pp.true_weights("L", 1).tolist() == pytest.approx([1.0])


def test_true_weights_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown pattern"):
        pp.true_weights("M-3", 4)
    with pytest.raises(ValueError, match="set size"):
        pp.true_weights("A", 0)


def test_true_table_pools_like_a_direct_sort() -> None:
    g = torch.Generator().manual_seed(1)
    features, lengths = pp.sample_sets(6, 5, (3, 9), g)
    table = pp.true_weight_table("L", lengths.tolist())
    pooled = pp.pool_sorted(features, lengths, table)
    for b, n in enumerate(lengths.tolist()):
        ranked = features[b, :n].sort(dim=0, descending=True).values
        expected = (pp.true_weights("L", n).unsqueeze(1) * ranked).sum(0)
        assert torch.allclose(pooled[b], expected, atol=1e-6)


@pytest.mark.parametrize("design", pp.DESIGNS)
def test_generators_mask_padding_and_sum_to_one(design: str) -> None:
    torch.manual_seed(0)
    model = pp.build_generator(design)
    sizes = [1, 2, 7, 15, 40]
    weights = model.size_weights(sizes)
    assert weights.shape == (len(sizes), max(sizes))
    for row, n in enumerate(sizes):
        assert weights[row, n:].eq(0).all()
        assert weights[row, :n].sum().item() == pytest.approx(1.0, abs=1e-5)
    # forward: padded positions (holding huge values) get weight 0 and do not leak into the output
    g = torch.Generator().manual_seed(2)
    features, lengths = pp.sample_sets(4, 3, (5, 12), g)
    padded = torch.cat([features, torch.zeros(4, 3, 3)], dim=1)
    padded[torch.arange(padded.shape[1]) >= lengths.unsqueeze(1)] = 1e4
    pooled, batch_weights = model(padded, lengths)
    assert pooled.shape == (4, 3) and batch_weights.shape == (4, padded.shape[1])
    valid = torch.arange(padded.shape[1]) < lengths.unsqueeze(1)
    assert batch_weights[~valid].eq(0).all()
    assert torch.allclose(batch_weights.sum(1), torch.ones(4), atol=1e-5)
    assert pooled.abs().max() < 10


def test_interp_generator_starts_uniform_and_interpolates() -> None:
    model = pp.InterpGenerator()
    assert torch.allclose(model.size_weights([8])[0], torch.full((8,), 1 / 8))
    with torch.no_grad():
        model.knots.copy_(torch.linspace(0, 1, pp.N_KNOTS))  # identity ramp: score = t / (N - 1)
    scores = model.scores(torch.tensor([5, 3]))
    assert torch.allclose(scores[0], torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))
    assert torch.allclose(scores[1, :3], torch.tensor([0, 0.5, 1.0]))


def test_sin_mlp_scores_ignore_the_set_size() -> None:
    torch.manual_seed(0)
    scores = pp.SinMLPGenerator().scores(torch.tensor([6, 10]))
    assert torch.equal(scores[0, :6], scores[1, :6])


def test_gpo_design_is_the_library_gpo() -> None:
    assert type(pp.build_generator(pp.GPO_DESIGN)) is pp.GPO


@pytest.mark.learning
def test_gpo_learns_max_pooling(learning_seed, measured) -> None:
    torch.manual_seed(learning_seed)
    model = pp.build_generator(pp.GPO_DESIGN)
    before = pp.evaluate(model, "M-1")
    pp.train_generator(model, "M-1", steps=40, batch=8, lr=1e-2, dim=16, seed=learning_seed)
    after = pp.evaluate(model, "M-1")
    seen = measured("seen_ratio", after["seen"] / before["seen"])
    larger = measured("larger_ratio", after["larger"] / before["larger"])
    assert before["seen"] > 0.1
    assert seen < 0.25  # 0.0009..0.027 over 3 kernels x 3 seeds (benchmarks/learning_spread.py)
    assert larger < 0.25


def test_reporting_helpers() -> None:
    assert pp.fmt(0.0654) == ".065" and pp.fmt(0.0004) == "0" and pp.fmt(0.0) == "0"
    values = {"a": 0.0001, "b": 0.0004, "c": 0.01}
    assert pp.rank_of(values, "b") == 1 and pp.rank_of(values, "c") == 3  # a and b tie at 3 decimals
    assert pp.best_of(values) == "a = b"
    table = pp.markdown_table(pp.PAPER_RMSE, "paper")
    assert "| **Cos/Sin + BiGRU** | 0 | .005 | .010 | .006 | 0 | .002/0 | .010/.004 |" in table
    lines = pp.comparison_lines(pp.PAPER_RMSE, pp.PAPER_RMSE)
    assert len(lines) == len(pp.PATTERNS) + 2


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_run_all_takes_the_median_over_seeds_and_flags_stuck_runs() -> None:
    lines: list[str] = []
    results, coefficients = pp.run_all(
        ["Cos/Sin + MLP"], ["L"], steps=3, batch=4, lr=1e-2, dim=4, seeds=[0, 1, 2], log=lines.append
    )
    row = results["Cos/Sin + MLP"]["L"]
    assert len(lines) == 3 and [r["seed"] for r in row["per_seed"]] == [0, 1, 2]
    for split in pp.SPLITS:
        assert row[split] == sorted(r[split] for r in row["per_seed"])[1]
    assert coefficients["Cos/Sin + MLP"]["L"].shape == (len(pp.PLOT_SIZES), max(pp.PLOT_SIZES))
    assert row["stuck_seeds"] == [r["seed"] for r in row["per_seed"] if r["stuck"]]
    fake = {"D": {"M-1": {"stuck_seeds": [3]}, "A": {"stuck_seeds": []}}}
    assert pp.stuck_line(fake).endswith("D on M-1 (seed 3)")
    assert "no run" in pp.stuck_line({"D": {"A": {"stuck_seeds": []}}})


@pytest.mark.parametrize("args", [["--steps", "0"], ["--lr", "abc"], ["--batch", "-3"], ["--seeds", "x"], ["--bogus"]])
def test_bad_cli_arguments_give_one_line_errors(args: list[str], tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        pp.parse_args([*args, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    assert captured.err.startswith("pooling_patterns.py: error: ")


def test_out_must_be_a_folder(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit):
        pp.parse_args(["--out", str(blocker)])
    assert "not a folder" in capsys.readouterr().err


def test_quick_defaults() -> None:
    quick = pp.parse_args(["--quick"])
    assert (quick.steps, quick.batch, quick.seeds) == (pp.QUICK["steps"], pp.QUICK["batch"], 1)
    full = pp.parse_args(["--steps", "7"])
    assert (full.steps, full.batch) == (7, pp.FULL["batch"])


@pytest.mark.slow
def test_quick_run_writes_outputs(tmp_path: Path) -> None:
    """The --quick path end to end (steps and batch cut further so the test stays well under 30 s)."""
    out = tmp_path / "pp"
    proc = _run("--quick", "--steps", "4", "--batch", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "coefficients.png").stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    assert set(results["rmse"]) == set(pp.DESIGNS)
    for rows in results["rmse"].values():
        assert set(rows) == set(pp.PATTERNS)
        for row in rows.values():
            assert all(math.isfinite(row[k]) for k in ("seen", "smaller", "larger"))
    assert results["settings"]["steps"] == 4 and results["settings"]["quick"] is True
    assert results["settings"]["seeds"] == [0]
    table = (out / "table.md").read_text()
    assert "Paper (VSE∞ supplementary Table 6)" in table and "Cos/Sin+BiGRU rank" in table
    assert "| Index + Interp. |" in proc.stdout and "total" in proc.stdout
