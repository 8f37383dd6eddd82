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


TINY = {"teacher": "tiny", "student": "micro", "vocab_size": 1000}  # 2 x 128 and 2 x 64, both 2 heads: a projection 64 -> 128


def _tiny_models():
    import torch

    from ds_distil.model.build import build_student, build_teacher
    from ds_distil.schema.distill import StudentConfig, TeacherConfig

    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(preset=TINY["teacher"]), TINY["vocab_size"], 0, 128)
    student = build_student(StudentConfig(preset=TINY["student"], dropout=0.0), TINY["vocab_size"], 0, pad_multiple=128)
    return teacher, student


def test_the_reference_step_trains_the_objective_it_is_given_with_the_objectives_own_parameters():
    """Issue 23: the plain-PyTorch reference runs any objective: the models return what its Needs name, and TinyBERT's
    projection is trained by the reference's optimizer (and clipped with the student)."""
    import math

    import torch

    from benchmarks.reference import ReferenceDistill
    from benchmarks.throughput import make_batches
    from ds_distil.schema.distill import LossConfig

    cpu = torch.device("cpu")
    b = make_batches(1, 2, 32, cpu, vocab=TINY["vocab_size"])[0]
    args = (b["input_ids"], b["attention_mask"], b["positions"], b["targets"])
    teacher, student = _tiny_models()
    kd = ReferenceDistill(teacher, student, TINY["vocab_size"], LossConfig(), "fp32", cpu, compile=False)
    assert kd.objective.name == "kd" and kd.module is None
    with torch.no_grad():
        kd_loss = float(kd.forward_loss(*args))

    ref = ReferenceDistill(teacher, student, TINY["vocab_size"], LossConfig(objective="tinybert"), "fp32", cpu, compile=False)
    projection = ref.module["projection"]
    assert (projection.in_features, projection.out_features) == (64, 128)
    in_optimizer = {id(p) for group in ref.opt.param_groups for p in group["params"]}
    assert {id(p) for p in projection.parameters()} <= in_optimizer and {id(p) for p in projection.parameters()} <= {id(p) for p in ref.params}
    assert {id(p) for p in student.parameters() if p.requires_grad} <= in_optimizer
    with torch.no_grad():
        tiny_loss = float(ref.forward_loss(*args))
    # the same models and batch: the KL and MLM terms are kd's, the attention and layer terms come on top
    assert math.isfinite(tiny_loss) and tiny_loss > kd_loss + 1e-3, (tiny_loss, kd_loss)
    before = projection.weight.detach().clone()
    loss = float(ref.step(b))
    assert math.isfinite(loss) and abs(loss - tiny_loss) < 1e-4
    assert not torch.equal(before, projection.weight.detach())


def test_the_throughput_benchmark_runs_an_objective_for_ours_and_the_reference(monkeypatch):
    """One configuration per method as the benchmark runs it (a fresh process each): tinybert with tiny models gives a
    finite loss and trains its projection, in our DeepSpeed step (StudentWithObjective) and in the reference."""
    import math

    from benchmarks.common import run_isolated

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = {**TINY, "seq_len": 32, "batch": 2, "steps": 2, "warmup": 1, "inputs": 2, "precision": "fp32", "compile": False,
            "pad": 128, "fused": True, "objective": "tinybert", "loss": {}}
    # 3 optimizer steps: our engine's learning-rate schedule over 2 steps gives both a rate of 0
    rows = {m: run_isolated("benchmarks.throughput", {**spec, "method": m}) for m in ("ours", "reference")}
    for method, row in rows.items():
        assert "error" not in row, (method, row.get("error"))
        assert row["objective"] == "tinybert" and math.isfinite(row["last_loss"]) and row["step_s"] > 0, row
        assert row["objective_params"] == 64 * 128 + 128 and row["objective_params_trained"] is True, row
    # the same objective on the same models and inputs: the two steps' losses agree (dropout makes them differ a little)
    assert abs(rows["ours"]["last_loss"] - rows["reference"]["last_loss"]) < 0.1 * rows["reference"]["last_loss"], rows


def test_throughput_markdown_compares_each_objective_with_kd():
    from benchmarks.throughput import render

    def row(objective, method, step_s):
        return {**_row(method, 1024 / step_s), "objective": objective, "last_loss": 5.0}

    result = {"device": {"gpu": None, "cpu": "x", "cpu_cores": 2}, "versions": {"torch": "2"}, "date": "2026-01-01", "command": "c",
              "config": {"precision": "fp32", "compile": False, "steps": 3, "warmup": 1, "inputs": 1, "objectives": ["kd", "tinybert"],
                         "objective_loss": {"kd": {}, "tinybert": {}}},
              "load_avg": {"start": [5.0, 4.0, 3.0], "end": [6.0, 5.0, 4.0]},
              "rows": [row("kd", "ours", 2.0), row("kd", "reference", 1.0), row("tinybert", "ours", 3.0), row("tinybert", "reference", 1.2)]}
    md = render(result)
    # the kd table keeps its layout and holds kd's rows only
    assert "| dbert-tiny | 128 | 8 | ours | float32 | 2.0000 |" in md and "| dbert-tiny | 128 | 8 | ours | float32 | 3.0000 |" not in md
    assert "| tinybert | ours | 3.0000 | 341 | 1.00 | 5.0000 | 1.50x | 0.40x |" in md  # step / kd's, ours/reference
    assert "| tinybert | reference | 1.2000 | 853 | 1.00 | 5.0000 | 1.20x |  |" in md
    assert "tinybert/kd ours 1.50x; tinybert/kd reference 1.20x" in md
    assert "Other jobs shared the cores" in md


def test_repeated_configurations_report_the_run_of_median_step_time():
    from benchmarks.throughput import median_run

    runs = [{"step_s": 3.0, "tokens_per_s": 1.0}, {"step_s": 1.0, "tokens_per_s": 3.0}, {"step_s": 2.0, "tokens_per_s": 2.0}]
    assert median_run(runs) == {"step_s": 2.0, "tokens_per_s": 2.0, "step_s_runs": [3.0, 1.0, 2.0]}
    assert median_run(runs[:2])["step_s"] == 1.0  # an even count: the lower middle run
    assert median_run(runs[:1]) == runs[0]
    assert median_run([runs[0], {"step_s": 1.0, "error": "boom"}])["error"] == "boom"


def test_the_cached_step_runs_without_a_teacher_and_its_report_compares_it_with_the_live_one(monkeypatch):
    """Issue 24: ours-cached, our step from a teacher cache's targets, in a fresh process as the benchmark runs it: no
    teacher built (its FLOPs are not counted), a finite loss; the report puts it beside the live step with the cache's
    bytes per sample."""
    import math

    from benchmarks.common import run_isolated
    from benchmarks.throughput import render

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = {**TINY, "seq_len": 32, "batch": 2, "steps": 2, "warmup": 1, "inputs": 2, "precision": "fp32", "compile": False,
            "pad": 128, "fused": True, "objective": "kd", "loss": {}}
    rows = {m: run_isolated("benchmarks.throughput", {**spec, "method": m, "cache_k": 4}) for m in ("ours", "ours-cached")}
    for row in rows.values():
        assert "error" not in row and math.isfinite(row["last_loss"]), row
    # the build's own work per batch (the teacher's forward at the masked slots and the draws), timed as a step
    rows["cache-build"] = run_isolated("benchmarks.throughput", {**spec, "method": "cache-build", "cache_k": 4, "batch": 4})
    assert "error" not in rows["cache-build"] and rows["cache-build"]["step_s"] > 0, rows["cache-build"]
    assert rows["ours-cached"]["step_flops"] < rows["ours"]["step_flops"]  # the teacher's forward is not in it
    result = {"device": {"gpu": None, "cpu": "x", "cpu_cores": 2}, "versions": {"torch": "2"}, "date": "2026-01-01", "command": "c",
              "config": {"precision": "fp32", "compile": False, "steps": 2, "warmup": 1, "inputs": 2, "cache_k": 4},
              "rows": [{**r, "student": "micro" if m != "cache-build" else "teacher"} for m, r in rows.items()]}
    md = render(result)
    assert "ours-cached: our step from a teacher cache (K = 4 sampled targets per masked slot" in md
    # 5 slots per 32-token sample at 15%: positions 2 + targets 4 + ids 4 x 4 + weights 4 x 4 + entropy 4 bytes per slot
    assert f"| {5 * (2 + 4 + 16 + 16 + 4)} | {2 + 4 + 16 + 16 + 4} |" in md
    build, live = rows["cache-build"]["step_s"] / 4, rows["ours"]["step_s"] / 2  # seconds per sample
    assert f"| 32 | {build:.4f} | {1 / build:.1f} | micro | {live:.4f} | {build / live:.2f} |" in md


def test_finetune_ours_over_reference_is_the_median_of_the_rounds_with_their_range():
    from benchmarks.finetune_speed import round_ratio

    ours, ref = {"step_s": 0.3, "round_step_s": [0.30, 0.33, 0.29]}, {"step_s": 0.3, "round_step_s": [0.30, 0.30, 0.29]}
    assert round_ratio(ours, ref) == "1.00x (1.00-1.10)"
    assert round_ratio({"step_s": 0.6}, {"step_s": 0.3}) == "2.00x"  # one round: no range


def test_the_evaluation_pass_predicts_what_the_old_pass_and_a_plain_loop_predict(monkeypatch, data_dir):
    """benchmarks.eval_speed on a micro model: ours (by length, inference mode) and the pass it replaced give the plain
    loop's classes for every validation and test row of Hatespeech."""
    from benchmarks.common import run_isolated

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    got = run_isolated("benchmarks.eval_speed", {"model": "micro", "task": "hatespeech", "max_length": 32, "batches": [64], "repeats": 1})
    assert "error" not in got, got.get("error")
    assert got["same_predictions"] is True and got["examples"] > 1000
    assert {r["method"] for r in got["rows"]} == {"before", "ours", "plain"} and all(r["rows_per_s"] > 0 for r in got["rows"])
