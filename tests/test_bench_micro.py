"""The micro-benchmarks' shared timing loop, and each micro-benchmark run as a script on tiny sizes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_timing", REPO / "benchmarks" / "timing.py")
_timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_timing)  # loaded from its file, as test_bench_rsicd loads the RSICD scripts
interleaved_times = _timing.interleaved_times


def test_interleaved_times_alternates_candidates_and_skips_the_warmup():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = interleaved_times(fns, repeats=3, warmup=2)
    assert calls == ["a", "b"] * 5  # one call of each per round: 2 untimed rounds, then 3 timed ones
    assert list(times) == ["a", "b"]
    assert all(len(t) == 3 and all(s >= 0 for s in t) for t in times.values())


def test_interleaved_times_measures_the_call():
    import time

    times = interleaved_times({"sleep": lambda: time.sleep(0.02), "noop": lambda: None}, repeats=2, warmup=0)
    assert min(times["sleep"]) >= 0.02
    assert max(times["noop"]) < 0.02


@pytest.mark.parametrize("repeats, warmup", [(0, 1), (1, -1)])
def test_interleaved_times_rejects_bad_counts(repeats, warmup):
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        interleaved_times({"a": lambda: None}, repeats, warmup)


@pytest.mark.parametrize(
    "script, args, check",
    [
        ("bench_gpo.py", ["--batch", "8", "--dim", "16", "--repeats", "2", "--warmup", "1", "--threads", "1"],
         lambda r: set(r["workloads"]["image-36"]["inference_ms"]) >= {"gpo", "max", "mean"}),
        ("bench_eval.py", ["--images", "60", "--dim", "16", "--repeats", "2", "--subset-images", "10",
                           "--subset-captions", "20"],
         lambda r: r["fast_and_plain_agree"] is True),
        ("bench_data.py", ["--repeats", "1"], lambda r: len(r["cases"]) == 3),
        ("sortnet_alternatives.py", ["--batch", "4", "--dim", "8", "--repeats", "1"],  # the alternatives are exact
         lambda r: all(all(w["exact_gradients"].values()) and len(w["median_ms"]) == 3 for w in r["workloads"].values())),
    ],
)  # fmt: skip
def test_micro_benchmark_runs_as_a_script(tmp_path, script, args, check):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args, "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr  # 1: a speed target missed on this machine, not an error
    assert len(proc.stdout.splitlines()) >= 4  # the printed table
    assert check(json.loads(out.read_text()))


@pytest.mark.slow
def test_search_benchmark_runs_as_a_script(tmp_path):
    """bench_cli_search.py on a 200-caption index, one round: every row is there and the ratios are computed."""
    pytest.importorskip("fastapi", reason="the benchmark starts vsekit serve")
    pytest.importorskip("transformers", reason="rsicd-aerial's text encoder is MiniLM-L6")
    out = tmp_path / "result.json"
    args = ["--items", "200", "--repeats", "1", "--server-queries", "5", "--file-queries", "20", "--work", str(tmp_path / "w")]
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_cli_search.py"), *args, "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(result["cold_seconds_median"]) == 5 and result["item_over_import_torch"] > 0
    assert result["warm_server_ms"]["queries"] == 5 and result["queries_file"]["queries"] == 20
    assert "--item / import torch" in proc.stdout


def test_matmul_floor_counts_a_linear_layers_products_by_hand():
    """nn.Linear(4 -> 3) on 5 rows, forward and backward: addmm 5×4·4×3, then the input's gradient 5×3·3×4 and the
    weight's 3×5·5×4: three products of 2·5·4·3 = 120 FLOPs each."""

    spec = importlib.util.spec_from_file_location("matmul_floor", REPO / "benchmarks" / "matmul_floor.py")
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4, requires_grad=True)
    calls = floor.record_matmuls(lambda: layer(x).sum().backward())
    assert sum(calls.values()) == 3 and sorted(floor.flops(c) for c in calls) == [120, 120, 120]
    timed = floor.time_matmuls(calls, repeats=2)
    assert timed["gflop"] == pytest.approx(360e-9) and timed["products"] == 3 and timed["seconds"] > 0
    out = torch.empty(5, 3)  # the out= forms count too (the GRU step loop writes its products into buffers)
    with torch.no_grad():
        calls = floor.record_matmuls(lambda: (torch.addmm(layer.bias, x, layer.weight.t(), out=out), torch.mm(x, x.t(), out=torch.empty(5, 5))))
    assert sorted(floor.flops(c) for c in calls) == [120, 200]


def test_bench_train_step_runs_on_tiny_sizes(tmp_path):
    """Both workers step, floors are measured before, amid and after the steps, page faults are counted; with
    the current code as its own baseline the speedup is about 1 (the allocator setting applies to both)."""
    out = tmp_path / "step.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_train_step.py"), "--baseline-src", str(REPO / "src"),
           "--batch", "4", "--steps", "2", "--warmup", "1", "--vocab", "100", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "step/floor" in proc.stdout and "faults/step" in proc.stdout and "step/floor <= 1.1: " in proc.stdout
    result = json.loads(out.read_text())
    assert result["device_name"].endswith(torch.backends.cpu.get_cpu_capability())  # AVX2 and AVX-512 steps differ
    assert result["step_over_floor_target_met"] == (result["step_over_floor"]["current"] <= 1.10)
    for name in ("core (b6d18c0)", "current"):
        assert len(result["step_seconds"][name]) == 2 and len(result["page_faults_per_step"][name]) == 2
        assert len(result["matmul_floor_runs"][name]) == 3 and result["matmul_floor"][name] in result["matmul_floor_runs"][name]
        assert 0 < result["matmul_floor"][name]["seconds"] < max(result["step_seconds"][name]) * 2
    assert result["matmul_floor"]["current"]["gflop"] == pytest.approx(result["matmul_floor"]["core (b6d18c0)"]["gflop"], rel=0.3)


def test_encode_memory_benchmark_runs_as_a_script(tmp_path):
    """bench_encode_memory.py on 5,000 items, the current code beside itself as the baseline: both rows, and the
    index's shards it wrote hold exactly the rows the run drew (checked in the child's own folder)."""
    out = tmp_path / "r.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_encode_memory.py"), "--items", "5000", "--dim", "64",
           "--baseline-src", str(REPO / "src"), "--workdir", str(tmp_path / "w"), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["embedding_bytes"] == 5000 * 64 * 4 and len(result["results"]) == 2
    assert all(r["peak_rss_bytes"] > 0 and r["total_seconds"] >= r["encode_seconds"] > 0 for r in result["results"].values())
    assert all(r["shards_hold_the_rows"] for r in result["results"].values())
    assert "peak RSS MB" in proc.stdout and not (tmp_path / "w" / "current").exists()  # the work is cleaned up
