"""benchmarks/learning_spread.py: its JUnit reading and summary by hand, and the script on one learning test."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("learning_spread", REPO / "benchmarks" / "learning_spread.py")
spread = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(spread)

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_a" name="test_learns"><properties><property name="best_rsum" value="{rsum}"/>
</properties>{failure}</testcase>
<testcase classname="tests.test_b" name="test_other[x]"><error message="boom"/></testcase>
</testsuite></testsuites>"""


def write(path: Path, rsum: float, failed: bool) -> Path:
    path.write_text(JUNIT.format(rsum=rsum, failure='<failure message="no"/>' if failed else ""))
    return path


def test_read_junit_and_summarise(tmp_path):
    runs = {
        ("default", 0): spread.read_junit(write(tmp_path / "a.xml", 50.0, False)),
        ("default", 1): spread.read_junit(write(tmp_path / "b.xml", 40.0, True)),
        ("avx2", 0): spread.read_junit(write(tmp_path / "c.xml", 60.0, False)),
    }
    assert runs["default", 0] == {"test_a::test_learns": {"outcome": "passed", "values": {"best_rsum": 50.0}},
                                  "test_b::test_other[x]": {"outcome": "error", "values": {}}}  # fmt: skip
    summary = spread.summarise(runs)
    learns = summary["test_a::test_learns"]
    assert learns["failed_in"] == ["default/seed1"]
    assert learns["values"]["best_rsum"]["default"] == {"0": 50.0, "1": 40.0}
    assert learns["values"]["best_rsum"]["all"] == {"min": 40.0, "median": 50.0, "max": 60.0}
    assert summary["test_b::test_other[x]"]["failed_in"] == ["default/seed0", "default/seed1", "avx2/seed0"]


def test_the_script_runs_a_learning_test_under_the_scalar_kernels(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "learning_spread.py"), "-k", "gpo_learns_max_pooling",
           "--seeds", "0", "--kernels", "default", "--workers", "1", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| test_pooling_patterns::test_gpo_learns_max_pooling :: seen_ratio |" in proc.stdout
    record = json.loads((tmp_path / "summary.json").read_text())
    assert record["kernels"] == {"default": {"ATEN_CPU_CAPABILITY": "default"}} and record["seeds"] == [0]
    values = record["tests"]["test_pooling_patterns::test_gpo_learns_max_pooling"]["values"]
    assert 0 < values["seen_ratio"]["default"]["0"] < 0.25
    assert (tmp_path / "default_seed0.xml").is_file() and not (tmp_path / "default_seed0.partial").exists()
