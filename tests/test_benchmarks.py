"""Benchmark reports render from stored result files (no timing asserted anywhere)."""

import json
import shutil

import pytest
from conftest import ROOT


def test_report_renders_the_newest_result_per_kind(tmp_path):
    from benchmarks.report import render

    stored = sorted((ROOT / "benchmarks" / "results").glob("throughput-quick_*.json"))
    assert stored, "the committed CPU throughput result is missing"
    src = stored[-1]
    shutil.copy(src, tmp_path / src.name)
    shutil.copy(src.with_suffix(".md"), tmp_path / src.with_suffix(".md").name)
    older = json.loads(src.read_text())
    (tmp_path / src.name.replace(older["date"], "2000-01-01")).write_text(json.dumps(older))
    page = render(tmp_path)
    assert page.count(f"## {src.stem}") == 1 and "2000-01-01" not in page
    assert "ours/baseline" in page and "CPU" in page


def _row(method, tokens_per_s, **extra):
    return {"student": "dbert-tiny", "seq_len": 128, "batch": 8, "method": method, "teacher_dtype": "float32", "step_s": 1024 / tokens_per_s,
            "tokens_per_s": tokens_per_s, "samples_per_s": 1.0, "achieved_tflops": 0.1, "mfu": None, "peak_memory_gib": 1.0, **extra}


def test_throughput_markdown_comes_from_the_numbers():
    from benchmarks.throughput import render

    result = {"device": {"gpu": None, "cpu": "x", "cpu_cores": 2}, "versions": {"torch": "2"}, "date": "2026-01-01", "command": "c",
              "config": {"precision": "fp32", "compile": False, "steps": 3, "warmup": 1, "inputs": 1},
              "rows": [_row("ours", 300.0), _row("reference", 200.0), _row("baseline", 100.0), _row("ours", 150.0, lever="no padding")]}
    md = render(result)
    ours = next(line for line in md.splitlines() if line.startswith("| dbert-tiny | 128 | 8 | ours |"))
    assert ours.endswith("| 1.50x | 3.00x |")  # ours/reference, ours/baseline
    assert "| dbert-tiny | 128 | 8 | no padding | 150 | 2.00x |" in md  # the lever's effect


@pytest.mark.parametrize("module, args", [
    ("benchmarks.throughput", ["--students", "no-such-student", "--methods", "ours,baseline", "--steps", "1", "--warmup", "1", "--inputs", "1"]),
    ("benchmarks.finetune_speed", ["--models", "no-such-model", "--tasks", "hatespeech", "--steps", "1", "--warmup", "1"]),
])
def test_a_benchmark_whose_every_configuration_failed_exits_non_zero_and_writes_nothing(module, args, tmp_path, data_dir):
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", module, *args, "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode != 0 and "every configuration failed; no report written" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_reports_go_only_into_a_folder_of_benchmark_results(tmp_path):
    """Issue 14: benchmark --out is claimed like every other output: results accumulate in their own folder,
    a folder holding something else is refused."""
    import pytest

    from benchmarks.common import write_report
    from ds_distil.core.errors import UserError
    from ds_distil.core.rundir import owner

    result = {"device": {"label": "cpu2"}}
    write_report("a", result, "# a\n", tmp_path / "res")
    write_report("b", result, "# b\n", tmp_path / "res")
    assert owner(tmp_path / "res") == "benchmarks" and len(list((tmp_path / "res").glob("*.md"))) == 2
    assert owner(ROOT / "benchmarks" / "results") == "benchmarks"  # the committed folder is marked
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        write_report("a", result, "# a\n", tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.tex"]
