"""The paper's tables from a study's results: mean ± std over seeds, runtimes and the average speedup
over the teacher, differences to the teacher row in the ablation tables, the reference rows, the
validation perplexity of distillation runs (when logged), and measured stage times beside estimates."""

from __future__ import annotations

import json

import pytest

from ds_distil.reporting.paper_tables import build, render, stage_estimates, stage_times, write_tables


def result(path, row, task, seed, score, runtime, bow=0.7, majority=0.5):
    path.mkdir(parents=True)
    path.joinpath("results.json").write_text(json.dumps({
        "model": row, "model_name": row, "task": task, "dataset": task, "metric": "accuracy", "score": score, "valid_score": score,
        "macro_f1": score, "train_runtime_s": runtime, "seed": seed, "data": {"files": {"test": {"sha256": "a" * 64}}},
        "baselines": {"majority": {"label": "0", "test": {"score": majority, "macro_f1": 0.3}},
                      "bow": {"model": "multinomial NB (alpha 0.3)", "test": {"score": bow, "macro_f1": bow}}}}))


def plan(tmp_path, estimates):
    rows = [{"id": "teacher", "label": "Teacher", "kind": "teacher", "run_dir": str(tmp_path / "teacher"), "tables": [2, 3, 4, 5],
             "student": None},
            {"id": "s", "label": "S", "kind": "student", "run_dir": str(tmp_path / "s"), "tables": [2, 3, 4, 5], "student": "s"},
            {"id": "s@scratch", "label": "From Scratch", "kind": "scratch", "run_dir": None, "tables": [2], "student": "s"},
            {"id": "s@data50", "label": "S, 50%", "kind": "variant", "run_dir": str(tmp_path / "s50"), "tables": [3], "student": "s"}]
    return {"study": {"name": "t", "teacher": {"source": "pretrain", "hub": "x"}, "sized_down": "small on purpose", "estimates": estimates},
            "rows": rows, "tasks": ["hatespeech", "pos"], "ablation_tasks": ["hatespeech"], "seeds": [1, 2],
            "stages": [{"name": n} for n in ("teacher", "finetune/teacher/hatespeech/seed1", "finetune/s/hatespeech/seed1")]}


def test_tables_from_results(tmp_path):
    runs = tmp_path / "finetune"
    scores = {"teacher": (0.80, 0.82, 100.0), "s": (0.70, 0.74, 25.0), "s@scratch": (0.60, 0.60, 20.0), "s@data50": (0.66, 0.68, 25.0)}
    for row, (a, b, rt) in scores.items():
        for task in ("hatespeech", "pos") if row != "s@data50" else ("hatespeech",):
            result(runs / row / task / "seed1", row, task, 1, a, rt)
            result(runs / row / task / "seed2", row, task, 2, b, rt * (1.5 if task == "pos" else 1.0))
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "metrics.jsonl").write_text('{"step": 10, "loss/mlm": 7.5}\n{"step": 20, "loss/mlm": 6.25, "val/perplexity": 310.5}\n'
                                                        '{"step": 2')  # a torn last line (a killed run) is skipped
    from ds_distil.reporting.report import collect

    p = plan(tmp_path, {"finetune/teacher/*": 3.0, "finetune/*": 1.0, "teacher": 10.0})
    tables = build(p, collect([runs]), {"teacher": 600.0, "finetune/teacher/hatespeech/seed1": 120.0, "finetune/s/hatespeech/seed1": 30.0})
    t2 = {r["id"]: r for r in tables["tables"][2]["rows"]}
    assert list(t2) == ["teacher", "s", "s@scratch", "bow", "majority"]
    assert t2["s"]["cells"]["hatespeech"]["score"]["mean"] == pytest.approx(0.72)
    assert t2["s"]["cells"]["hatespeech"]["score"]["std"] == pytest.approx(0.0282843, rel=1e-4)
    assert t2["s"]["speedup"] == pytest.approx(4.0)  # 100/25 on both tasks (pos: 125/31.25)
    assert t2["teacher"]["val_perplexity"] == 310.5 and t2["teacher"]["train_mlm_loss"] == 6.25 and t2["s"]["val_perplexity"] is None
    assert t2["bow"]["cells"]["pos"]["score"]["mean"] == 0.7 and t2["majority"]["cells"]["hatespeech"]["score"]["mean"] == 0.5
    assert set(tables["tables"]) == {2, 3}  # no Table 4 or 5 rows in this study
    t3 = {r["id"]: r for r in tables["tables"][3]["rows"]}
    assert list(t3) == ["teacher", "s", "s@data50", "bow", "majority"] and tables["tables"][3]["tasks"] == ["hatespeech"]
    assert t3["s@data50"]["diff"]["hatespeech"] == pytest.approx(0.67 - 0.81)

    md = render(tables, p)
    assert "**Sized down, not the paper's setting:** small on purpose" in md and "stand-in for mBERT" in md
    assert "| S | 72.00 ± 2.83 | 72.00 ± 2.83 | 25 | 31 | 4.00x | - | - |" in md
    assert "| Teacher | 81.00 ± 1.41 | 81.00 ± 1.41 | 100 | 125 | 1.00x | 310.5 | 6.250 |" in md
    assert "| S, 50% | 67.00 ± 1.41 | -14.00 |" in md and "| Bag of words (linear model on unigrams + bigrams) | 70.00 | -11.00 |" in md
    # estimates are first-match in the study's order: the teacher's finetuning is 3.0, not the later catch-all's 1.0
    assert "| finetune/teacher/hatespeech | 1 | 2.0 | 3.0 |" in md and "| finetune/s/hatespeech | 1 | 0.5 | 1.0 |" in md
    assert md.index("| teacher | 1 | 10.0 | 10.0 |") < md.index("| finetune/teacher/hatespeech |")  # in plan order
    assert "against the study's estimates as written" in md
    # where the runner scaled the study's figures to the machine it ran on (a probe), its markers hold them: those count
    tables["stage_estimates"] = {"teacher": 7.5}
    md = render(tables, p)
    assert "| teacher | 1 | 10.0 | 7.5 |" in md and "| finetune/s/hatespeech | 1 | 0.5 | 1.0 |" in md
    assert "against the estimates for the machine they ran on" in md


def test_stage_times_come_from_done_markers_only(tmp_path):
    stages = tmp_path / ".experiment" / "stages" / "finetune"
    stages.mkdir(parents=True)
    (stages / "a.json").write_text(json.dumps({"name": "finetune/a", "state": "done", "seconds": 12.5}))
    (stages / "b.json").write_text(json.dumps({"name": "finetune/b", "state": "running"}))
    (stages / "c.json").write_text("{torn")
    assert stage_times(tmp_path) == {"finetune/a": 12.5}
    (stages / "d.json").write_text(json.dumps({"name": "finetune/d", "state": "done", "seconds": 3.0, "estimate_min": 0.25}))
    assert stage_estimates(tmp_path) == {"finetune/d": 0.25}  # a marker without one (an older runner's, unscaled) gives none


def test_a_file_that_is_not_a_plan_is_refused(tmp_path):
    from ds_distil.core.errors import UserError

    (tmp_path / "plan.json").write_text("{}")
    with pytest.raises(UserError, match="is not a study's plan.json"):
        write_tables(tmp_path / "plan.json", [str(tmp_path)], tmp_path / "out")


def test_the_objectives_table_compares_each_objective_with_its_students_own_row(tmp_path):
    runs = tmp_path / "finetune"
    p = plan(tmp_path, {})
    p["rows"].append({"id": "s@obj-tinybert", "label": "S, objective: tinybert", "kind": "variant", "run_dir": str(tmp_path / "stb"),
                      "tables": [6], "student": "s", "variant": {"objective": "tinybert"}})
    for row, score in {"teacher": 0.80, "s": 0.70, "s@scratch": 0.60, "s@data50": 0.66, "s@obj-tinybert": 0.75}.items():
        for task in ("hatespeech",):
            result(runs / row / task / "seed1", row, task, 1, score, 10.0)
    for run, objective, kl in (("s", "kd", 0.5), ("stb", "tinybert", 0.25)):  # what the distillation runs recorded
        ckpt = tmp_path / run / "checkpoints" / "step00000010"
        ckpt.mkdir(parents=True)
        (tmp_path / run / "checkpoints" / "latest").write_text("step00000010")
        (ckpt / "trainer_state.json").write_text(json.dumps({"objective": {"name": objective}}))
        (tmp_path / run / "metrics.jsonl").write_text(json.dumps({"step": 10, "val/perplexity": 900.0, "val/kl": kl}) + "\n")
    from ds_distil.reporting.report import collect

    tables = build(p, collect([runs]), {})
    t6 = {r["id"]: r for r in tables["tables"][6]["rows"]}
    assert list(t6) == ["teacher", "s", "s@obj-tinybert", "s@scratch", "bow", "majority"]
    assert t6["s@obj-tinybert"]["diff"]["hatespeech"] == pytest.approx(0.05) and t6["s@scratch"]["diff"]["hatespeech"] == pytest.approx(-0.10)
    assert t6["s"]["diff"]["hatespeech"] is None and t6["teacher"]["diff"]["hatespeech"] is None
    md = render(tables, p)
    assert "## Table 6 (beyond the paper): distillation objectives" in md
    assert "| S, objective: tinybert | tinybert | 75.00 | +5.00 | 900.0 | 0.250 |" in md
    assert "| S | kd | 70.00 | - | 900.0 | 0.500 |" in md
    assert "| From Scratch | - | 60.00 | -10.00 | - | - |" in md


def test_the_task_distillation_table_sets_each_student_row_against_the_student_alone(tmp_path):
    """Table 8 of a study without distillation (teacher.source: none): the task teacher, the student alone, with KD and with
    KD + a transfer set, each Δ against the student alone marked where it exceeds the seed spread, what the teacher said of
    the rows (from results.json), and bag of words on the students' labelled rows and on every labelled row."""
    runs = tmp_path / "finetune"
    rows = [{"id": "kd-teacher", "label": "Teacher", "kind": "kd-teacher", "run_dir": None, "tables": [8], "student": None},
            *({"id": f"s{suffix}", "label": f"S{suffix}", "kind": "kd-student", "run_dir": None, "tables": [8], "student": "s"}
              for suffix in ("", "@kd", "@kd-transfer"))]
    p = {"study": {"name": "t", "teacher": {"source": "none"}, "estimates": {}}, "rows": rows, "tasks": ["hatespeech"], "seeds": [1, 2],
         "stages": []}
    scores = {"kd-teacher": [0.80], "s": [0.70, 0.72], "s@kd": [0.71, 0.72], "s@kd-transfer": [0.76, 0.78]}
    for rid, values in scores.items():
        for seed, score in enumerate(values, 1):
            result(runs / rid / "hatespeech" / f"seed{seed}", rid, "hatespeech", seed, score, 10.0, bow=0.74 if rid == "kd-teacher" else 0.66)
            if rid != "kd-teacher" and rid != "s":
                f = runs / rid / "hatespeech" / f"seed{seed}" / "results.json"
                r = json.loads(f.read_text())
                said = {"train": {"agreement": 0.9}, **({"transfer": {"agreement": 0.79, "mean_confidence": 0.86, "rows": 4000}}
                                                        if rid == "s@kd-transfer" else {})}
                f.write_text(json.dumps({**r, "distillation": {"teacher": said}}))
    from ds_distil.reporting.report import collect

    tables = build(p, collect([runs]), {})
    assert set(tables["tables"]) == {8}  # no teacher row: none of the paper's tables
    t8 = {r["id"]: r for r in tables["tables"][8]["rows"]}
    assert list(t8) == ["kd-teacher", "s", "s@kd", "s@kd-transfer", "bow", "bow-all", "majority"]
    assert t8["s@kd-transfer"]["diff"]["hatespeech"] == pytest.approx(0.06) and t8["s@kd-transfer"]["beyond_spread"]["hatespeech"]
    assert t8["s@kd"]["diff"]["hatespeech"] == pytest.approx(0.005) and not t8["s@kd"]["beyond_spread"]["hatespeech"]
    assert t8["bow"]["cells"]["hatespeech"]["mean"] == 0.66 and t8["bow-all"]["cells"]["hatespeech"]["mean"] == 0.74
    md = render(tables, p)
    assert "**No distillation teacher** (teacher.source: none)" in md and "## Table 8 (beyond the paper): task distillation" in md
    assert "| S@kd-transfer | 77.00 ± 1.41 | +6.00 * | 90.0 / 79.0 | 86.0 |" in md
    assert "| S@kd | 71.50 ± 0.71 | +0.50 | 90.0 / - | - |" in md and "| Teacher | 80.00 | - | - | - |" in md
