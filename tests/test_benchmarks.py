"""Benchmark reports render from stored result files (no timing asserted anywhere)."""

import json
import shutil

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


def test_throughput_markdown_comes_from_the_numbers(tmp_path):
    from benchmarks.throughput import render

    result = json.loads(sorted((ROOT / "benchmarks" / "results").glob("throughput-quick_*.json"))[-1].read_text())
    ours = next(r for r in result["rows"] if r["method"] == "ours")
    base = next(r for r in result["rows"] if r["method"] == "baseline" and r["student"] == ours["student"])
    ours["tokens_per_s"], base["tokens_per_s"] = 300.0, 100.0
    md = render(result)
    assert "| 3.00x |" in md


def test_reports_go_only_into_a_folder_of_benchmark_results(tmp_path):
    """Issue 14: benchmark --out is claimed like every other output: results accumulate in their own folder,
    a folder holding something else is refused."""
    import pytest

    from benchmarks.common import write_report
    from ds_distil.errors import UserError
    from ds_distil.rundir import owner

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
