"""`ds-distil report` from stored results: rows per model, task and dataset; seeds averaged within a
dataset only; baselines as rows; model names from results.json, not paths."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from ds_distil.reporting.report import build_table, collect, render_markdown


def fake_result(path, model_name, dataset, seed, score, runtime, test_sha="a" * 64, majority=0.8, warnings=(), **extra):
    path.mkdir(parents=True)
    res = {
        "model": f"/somewhere/runs/{model_name}/student", "model_name": model_name, "task": "csv", "dataset": dataset,
        "metric": "accuracy", "score": score, "valid_score": score, "macro_f1": score / 2, "train_runtime_s": runtime, "seed": seed,
        "data": {"files": {"test": {"sha256": test_sha}}}, "splits": {"test": {"examples": 100}},
        "baselines": {"majority": {"label": "no", "description": "always 'no'", "test": {"score": majority, "macro_f1": majority / 2}}},
        "warnings": list(warnings), **extra,
    }
    (path / "results.json").write_text(json.dumps(res))


def test_two_datasets_two_seeds_give_one_table_each_and_a_baseline_row(tmp_path):
    for ds, base in (("reviews", 0.6), ("tweets", 0.8)):
        for seed, delta in ((1, 0.0), (2, 0.02)):
            fake_result(tmp_path / ds / f"tiny-{seed}", "dbert-tiny", ds, seed, base + 0.1 + delta, 10.0 + seed, majority=base)
            fake_result(tmp_path / ds / f"mbert-{seed}", "mbert", ds, seed, base + 0.15, 40.0, majority=base)
    results = collect([tmp_path])
    table = build_table(results)
    assert [(g["task"], g["dataset"]) for g in table["groups"]] == [("csv", "reviews"), ("csv", "tweets")]
    for g, base in zip(table["groups"], (0.6, 0.8)):
        rows = {r["model"]: r for r in g["rows"]}
        assert list(rows) == ["baseline: majority ('no')", "mbert", "dbert-tiny"]
        assert rows["baseline: majority ('no')"]["score"]["mean"] == pytest.approx(base)
        tiny = rows["dbert-tiny"]
        assert tiny["seeds"] == [1, 2] and tiny["score"]["n"] == 2  # the two seeds of this dataset, not of both
        assert tiny["score"]["mean"] == pytest.approx(base + 0.11)
    speed = {r["model"]: r for r in table["speed"]["rows"]}
    assert table["speed"]["baseline"] == "mbert" and speed["dbert-tiny"]["datasets"] == 2
    assert speed["dbert-tiny"]["speedup"] == pytest.approx(40.0 / 11.5)
    md = render_markdown(table, results)
    assert "## csv / reviews (accuracy; test 100 examples)" in md and "## csv / tweets" in md
    assert "| dbert-tiny | 71.00 ± 1.41 | 35.50 ± 0.71 | 11.50 ± 0.71 | 1, 2 |" in md
    assert "| baseline: majority ('no') | 60.00 | 30.00 | - | - |" in md
    assert "/somewhere/runs" not in md.split("| model | task | dataset")[0]  # names, not paths, in the tables


def test_same_dataset_name_with_other_test_data_is_not_averaged(tmp_path):
    fake_result(tmp_path / "a", "m", "data", 1, 0.5, 1.0, test_sha="1" * 64)
    fake_result(tmp_path / "b", "m", "data", 2, 0.9, 1.0, test_sha="2" * 64)
    groups = build_table(collect([tmp_path]))["groups"]
    assert [g["dataset"] for g in groups] == ["data [test sha256 11111111]", "data [test sha256 22222222]"]


def test_one_class_runs_are_flagged_in_the_report(tmp_path):
    fake_result(tmp_path / "a", "m", "d", 1, 0.8, 1.0, warnings=["the model predicts 'no' for 100.0% of the test set"])
    fake_result(tmp_path / "b", "m", "d", 2, 0.9, 1.0)
    proc = run_cli("report", "--runs", str(tmp_path), "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    assert "| m ⚠ one class in 1/2 runs |" in proc.stdout
    # newer results say one_class themselves: a leak or truncation warning is not a one-class run
    fake_result(tmp_path / "c", "n", "d", 1, 0.8, 1.0, warnings=["3 of the 20 test rows (15.0%) also occur in training"], one_class=False)
    fake_result(tmp_path / "e", "n", "d", 2, 0.8, 1.0, warnings=["the model predicts 'no' ...", "class 'yes' ..."], one_class=True)
    rows = {r["model"]: r for r in build_table(collect([tmp_path]))["groups"][0]["rows"]}
    assert rows["n"]["one_class_runs"] == 1 and rows["m"]["one_class_runs"] == 1
    assert (tmp_path / "report" / "report.png").stat().st_size > 1000
