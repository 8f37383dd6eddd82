"""`ds-distil experiment`: every shipped study is loaded and planned (--dry-run), bad study files are
refused with one line, stage keys follow the settings, and a tiny real study runs end to end, stops
on a failing stage naming it and its log, is interrupted mid-distillation, and resumes without
redoing finished stages."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

STUDIES = sorted((ROOT / "configs" / "studies").glob("*.yaml"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.parametrize("study", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_shipped_study_is_loaded_and_planned(study, tmp_path, data_dir):
    out = tmp_path / "out"
    proc = run_cli("experiment", str(study), "--out", str(out), "--dry-run", env=ENV)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    stages = [ln for ln in lines if ln.startswith("[")]
    commands = [ln.strip() for ln in lines if ln.startswith("    ds-distil ")]
    assert len(stages) == len(commands) >= 5
    assert stages[-1].split()[1] == "report" and "--study" in commands[-1]
    from ds_distil.schema.study import load_study

    distils = load_study(study).teacher.source != "none"  # task-kd-cpu: finetuning rows only
    assert any(c.startswith("ds-distil prepare ") for c in commands) == distils and any(c.startswith("ds-distil finetune ") for c in commands)
    total = next(ln for ln in lines if "stages to run; estimated" in ln)
    assert "some stages have no estimate" not in total  # every stage of a shipped study is estimated
    for c in commands:  # the recipes are referenced, not copied
        if c.startswith("ds-distil finetune "):
            assert re.search(r"--config configs/finetune/[\w-]+\.yaml ", c), c  # a recipe file of configs/finetune/
            assert "train.lr=" not in c
    assert not out.exists()  # a dry run writes nothing


def test_shipped_studies_say_how_they_are_sized():
    from ds_distil.schema.study import load_study

    cpu, gpu, demo = (load_study(ROOT / "configs" / "studies" / f"{n}.yaml") for n in ("paper-tl-cpu", "paper-tl-gpu", "demo"))
    assert cpu.sized_down and demo.sized_down and gpu.sized_down  # every study here is smaller than the paper's 3 epochs of OSCAR
    assert len(gpu.finetune.seeds) >= 3 and {"hatespeech", "pos"} <= set(cpu.finetune.tasks)
    assert {"ner", "hatespeech", "nli"} <= set(gpu.finetune.tasks)
    assert list(demo.students) and demo.baselines.from_scratch


BAD = [
    ("name: x\nteacher: {source: pretrain, settings: {train.max_steps: 1}}\nfinetune: {tasks: {hatespeech: {}}}\nstudentz: {}\n",
     "unknown config key 'studentz' (did you mean 'students'?)"),
    ("name: x\nfinetune: {tasks: {hatespeech: {}}}\n", "missing config key 'teacher'"),
    ("name: x\nteacher: {source: somewhere}\nfinetune: {tasks: {hatespeech: {}}}\n", "teacher.source': expected one of 'hub' | 'pretrain'"),
    ("name: x\nteacher: {source: hub}\nfinetune: {tasks: {sentiment: {}}}\n", "unknown task 'sentiment'"),
    ("name: x\nteacher: {source: hub}\nfinetune: {tasks: {hatespeech: {}}}\nablations: {students: [nope]}\n",
     "ablations.students names students, but the study has none"),
    ("name: x\nteacher: {source: hub}\nfinetune: {blank_recipe: configs/finetune/nope.yaml, tasks: {hatespeech: {}}}\n",
     "config file configs/finetune/nope.yaml does not exist"),
    ("name: x\nteacher: {source: hub}\nstudents: {s: {label: S, settings: {train.max_stepz: 3}}}\nfinetune: {tasks: {hatespeech: {}}}\n",
     "stage distill/s: unknown config key 'train.max_stepz' (did you mean 'train.max_steps'?)"),
    ("name: x\nteacher: {source: hub}\nfinetune: {tasks: {hatespeech: {settings: {task.max_lenght: 3}}}}\n",
     "stage finetune/teacher/hatespeech/seed1: unknown config key 'task.max_lenght'"),
    ("name: x\nteacher: {source: hub, condition: {enabled: false}}\nablations: {conditioned_teacher: true}\nfinetune: {tasks: {hatespeech: {}}}\n",
     "ablations.conditioned_teacher needs teacher.condition.enabled: true"),
    ("name: x\nteacher: [hub]\n", "config key 'teacher': expected a section"),
    ("name: x\nteacher: {source: hub}\nablations: {teacher_signal: true}\nfinetune: {tasks: {hatespeech: {}}}\n",
     "ablations.teacher_signal compares the cache with the live teacher: it needs cache.enabled: true"),
    ("name: x\nranks: 1\nteacher: {source: hub}\nranks: 2\nfinetune: {tasks: {hatespeech: {}}}\n",
     "line 4 is not valid YAML: the key 'ranks' is given twice, at lines 2 and 4"),
    ("name: x\nteacher: {source: none}\nstudents: {s: {label: S}}\nfinetune: {tasks: {hatespeech: {}}}\n",
     "teacher.source: none distils nothing, but the study sets students"),
    ("name: x\nteacher: {source: none}\nfinetune: {tasks: {hatespeech: {}}}\ntask_kd: {students: {s: {model: micro, label: S}}}\n",
     "task_kd.students need task_kd.teacher"),
    ("name: x\nteacher: {source: none}\nfinetune: {tasks: {hatespeech: {}, pos: {}}}\ntask_kd: {teacher: {model: tiny, label: T}, "
     "students: {s: {model: micro, label: S}}, transfer_from_train: {hatespeech: 10}}\n", "task_kd.transfer_from_train: no rows held back on pos"),
    ("name: x\nteacher: {source: none}\nfinetune: {tasks: {hatespeech: {}}}\ntask_kd: {teacher: {model: tiny, label: T}, "
     "students: {s: {model: micro, label: S}}, transfer_from_train: {hatespeech: 10}, settings: {kd.alpha: 2}}\n",
     "stage finetune/s@kd/hatespeech/seed1: config section 'kd': alpha must be in [0, 1]"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_study_files_are_refused_with_one_line(text, message, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(text)
    proc = run_cli("experiment", str(study), "--out", str(tmp_path / "out"), "--dry-run", env=ENV)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ds-distil experiment: error: study {study}: ") and message in err[0], err


def test_a_directory_the_study_did_not_make_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    proc = run_cli("experiment", str(ROOT / "configs" / "studies" / "demo.yaml"), "--out", str(out), env=ENV)
    assert proc.returncode == 2 and "is not empty and is not a study's output" in proc.stderr
    assert (out / "notes.txt").read_text() == "keep me" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_changed_setting_changes_the_key_of_its_stage_and_of_what_depends_on_it(tmp_path, data_dir):
    from ds_distil.schema.study import load_study
    from ds_distil.study.runner import Runner

    path = ROOT / "configs" / "studies" / "paper-tl-gpu.yaml"

    def keys(*overrides):
        return {s.name: s.key for s in Runner(load_study(path, list(overrides)), path, tmp_path / "o").stages}

    base = keys()
    assert keys() == base  # deterministic
    runner = Runner(load_study(path), path, tmp_path / "o")
    estimates = json.loads(runner.plan_text)["study"]["estimates"]  # the report matches stages against them first-match:
    assert list(estimates) == list(load_study(path).estimates)     # plan.json keeps the study's order
    changed = keys("finetune.seeds=[1,7]")
    assert any(n.endswith("/seed7") for n in changed) and not any(n.endswith("/seed7") for n in base)
    kept = [n for n in base if n in changed]
    assert [n for n in kept if base[n] != changed[n]] == ["report"]  # every other stage, seed 1's included, keeps its key
    changed = keys("teacher.settings.train.lr=0.0003")
    differ = {n for n in base if base[n] != changed[n]}
    assert {n for n in base if n.startswith(("teacher", "distill/", "finetune/teacher/"))} <= differ  # all downstream of the teacher
    assert not {n for n in differ if n.startswith(("prepare/", "data/"))}
    blank_models = {n for n in base if n.startswith("finetune/") and n.split("/")[1] in {"tagalog-roberta-arch", "distilmbert-arch"}}
    assert len(blank_models) == 24 and not blank_models & differ  # architecture baselines with random weights do not depend on the teacher
    student = next(n for n in base if n.startswith("distill/") and "@" not in n)
    sid = student.split("/", 1)[1]
    k2 = keys(f"students.{sid}.label=renamed")  # a label is not a setting of any command but the report's
    assert {n for n in base if base[n] != k2[n]} == {"report"}


CACHED = """
name: cached
teacher: {source: hub}
cache: {enabled: true, k: 8, mask_copies: 2}
distill: {settings: {loss.temperature: 3.0}}
students:
  a: {label: A, settings: {student.preset: micro}}
  b: {label: B, settings: {student.preset: tiny}}
ablations:
  students: [a]
  data_fractions: [0.5]
  teacher_signal: true
  embeddings: {copy: {student.embeddings: teacher}}
  objectives:
    tinybert: {loss.objective: tinybert, loss.a_attention: 1.0, loss.a_layers: 1.0, loss.a_kl: 0.0, loss.a_mlm: 0.0}
finetune: {tasks: {hatespeech: {}}}
"""


def test_a_study_with_a_cache_runs_the_teacher_once_per_shard_set_for_every_student_that_can_read_it(tmp_path, data_dir):
    """cache.enabled: one teacher-cache stage per teacher and shard set, built for the students' temperature and masks,
    read by both students and the embeddings variant (Tables 2 and 5), the 50% run from a cache of its own shards; the
    TinyBERT variant runs the live teacher; Table 7's live row gets the same static masks without a cache, its top-k row
    a top-k cache of the same K. Changing a student does not change any cache's key."""
    from ds_distil.schema.study import load_study
    from ds_distil.study.runner import Runner

    path = tmp_path / "cached.yaml"
    path.write_text(CACHED)
    runner = Runner(load_study(path), path, tmp_path / "o")
    stages = {s.name: s for s in runner.stages}
    caches = {n: s for n, s in stages.items() if s.command == "teacher-cache"}
    assert sorted(caches) == ["cache/teacher-f050", "cache/teacher-f100", "cache/teacher-f100-topk"]

    def arg(stage, key):
        return next((a.split("=", 1)[1] for a in reversed(stage.args) if a.startswith(f"{key}=")), None)

    for name, c in caches.items():
        assert arg(c, "cache.temperature") == "3.0" and arg(c, "cache.k") == "8" and arg(c, "data.mask_copies") == "2"
        assert arg(c, "cache.method") == ("top_k" if name.endswith("topk") else "sampled")
        assert arg(c, "teacher.pretrained") == "bert-base-multilingual-cased" and c.resumable
    reads = {n: arg(s, "teacher.cache") for n, s in stages.items() if s.command == "distill"}
    o = tmp_path / "o" / "caches"
    assert reads == {"distill/a": str(o / "teacher-f100"), "distill/b": str(o / "teacher-f100"), "distill/a@emb-copy": str(o / "teacher-f100"),
                     "distill/a@data50": str(o / "teacher-f050"), "distill/a@topk": str(o / "teacher-f100-topk"),
                     "distill/a@live": None, "distill/a@obj-tinybert": None}
    for name in reads:
        masking = arg(stages[name], "data.masking")
        assert masking == (None if name.endswith("tinybert") else "static"), name
        assert (reads[name] is None) or f"cache/{Path(reads[name]).name}" in stages[name].deps
    plan = json.loads(runner.plan_text)
    assert {r["id"]: r["cache"] for r in plan["rows"] if r["kind"] in ("student", "variant")}["a@topk"] == "cache/teacher-f100-topk"
    before = {n: s.key for n, s in stages.items()}
    other = Runner(load_study(path, ["students.a.settings.student.num_layers=1"]), path, tmp_path / "o")
    after = {s.name: s.key for s in other.stages}
    assert all(after[n] == before[n] for n in caches) and after["distill/a"] != before["distill/a"]


# ---------------------------------------------------------------------------------- end to end


def small_csv(src: Path, dst: Path, rows: int) -> None:
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    dst.write_text("".join(lines[: rows + 1]), encoding="utf-8")


TINY = """
name: tiny
sized_down: a test study, micro models and a handful of steps
estimates: {{"*": 0.1}}
estimates_probe: {{machine: "a test machine", precision: fp32, fp32_s: 0.2}}
prepare:
  corpus: {corpus}
  tokenizer: {tokenizer}
  seq_len: 64
  settings: {{max_docs: 300, workers: 1, samples_per_shard: 100, val_fraction: 0.05}}
teacher:
  source: pretrain
  settings:
    student: {{preset: micro}}
    train: {{micro_batch_size: 4, max_steps: 6, lr: 0.001}}
    data: {{num_workers: 0, shuffle_buffer: 50}}
    checkpoint.every_steps: 3
    deepspeed.config: ds_configs/zero2-fp32.json
cache: {{enabled: true, k: 4}}
distill:
  settings:
    train: {{micro_batch_size: 4, max_steps: {student_steps}, lr: 0.001}}
    data: {{num_workers: 0, shuffle_buffer: 50}}
    checkpoint.every_steps: 2
    log.every_steps: 1
    deepspeed.config: ds_configs/zero2-fp32.json
students:
  s:
    label: Student S
    settings: {{student.preset: micro, student.num_layers: 1}}
ablations:
  embeddings:
    copy: {{student.embeddings: teacher}}
finetune:
  seeds: [1]
  settings: {{train.max_steps: 2, train.micro_batch_size: 8, eval_batch_size: 64, task.max_length: 32}}
  tasks:
    hatespeech: {{data_dir: {hs}}}
"""


def _markers(out: Path) -> dict[str, dict]:
    root = out / ".experiment" / "stages"
    return {json.loads(p.read_text())["name"]: json.loads(p.read_text()) for p in root.rglob("*.json")}


@pytest.mark.slow
def test_tiny_study_runs_stops_on_a_failing_stage_is_interrupted_and_resumes(tmp_path, data_dir, corpus, mbert_tokenizer_dir):
    hs = tmp_path / "hs"
    hs.mkdir()
    for split, n in (("train", 120), ("valid", 60)):  # no test.csv yet: the first finetuning stage fails
        small_csv(data_dir / "hatespeech" / f"{split}.csv", hs / f"{split}.csv", n)
    study = tmp_path / "tiny.yaml"
    study.write_text(TINY.format(corpus=corpus, tokenizer=mbert_tokenizer_dir, hs=hs, student_steps=60))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ds_distil", "experiment", str(study), "--out", str(out)]

    # 1. a failing stage stops the study with one line naming it, its error and its log; the stages before it are done
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = "finetune/teacher/hatespeech/seed1"
    log = out / "logs" / f"{failed}.log"
    assert f"stage {failed} failed (exit status 2)" in proc.stderr and str(log) in proc.stderr and "test" in proc.stderr
    m = _markers(out)
    assert m["prepare/f100"]["state"] == "done" and m["teacher"]["state"] == "done" and m[failed]["state"] == "running"
    assert (out / "teacher" / "student" / "config.json").is_file() and not (out / "students").exists()
    first_done = {n: m[n]["finished"] for n in ("prepare/f100", "teacher")}

    # 2. fixed data; Ctrl-C while the student distils: it checkpoints, the runner exits 75
    small_csv(data_dir / "hatespeech" / "test.csv", hs / "test.csv", 60)
    runner = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=ROOT)
    ckpts = out / "students" / "s" / "checkpoints"
    deadline = time.time() + 600
    while not (ckpts.is_dir() and any(p.name.startswith("step") and (p / "COMPLETE").exists() for p in ckpts.iterdir())):
        assert runner.poll() is None and time.time() < deadline, runner.stdout.read() if runner.poll() is not None else "timeout"
        time.sleep(0.2)
    runner.send_signal(signal.SIGINT)
    text = runner.communicate(timeout=300)[0]
    assert runner.returncode == 75, text
    assert "stopped by SIGINT at stage distill/s" in text
    assert "2 of 10 stages done earlier" in text  # prepare and teacher were not redone ...
    m = _markers(out)
    assert {n: m[n]["finished"] for n in first_done} == first_done  # ... their markers are untouched
    assert m[failed]["state"] == "done" and m["cache/teacher-f100"]["state"] == "done" and m["distill/s"]["state"] == "running"
    assert log.read_text().count("=== ") == 2  # the failed stage was run again, the rest only once
    assert (out / "logs" / "teacher.log").read_text().count("=== ") == 1

    # 3. the same command continues: distill resumes from its checkpoint, the study finishes with the tables
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "distill/s (resuming)" in proc.stdout and "4 of 10 stages done earlier" in proc.stdout
    slog = (out / "logs" / "distill" / "s.log").read_text()
    assert slog.count("=== ") == 2 and "--resume" in slog.split("=== ")[-1].splitlines()[0] and "resumed from step" in slog
    assert all(v["state"] == "done" for v in _markers(out).values())
    # each stage's estimate for this machine (the study's 0.1 min scaled by the probe here) is kept, and is the report's
    assert all(isinstance(v["estimate_min"], float) and v["estimate_min"] > 0 for v in _markers(out).values())
    tables = (out / "report" / "tables.md").read_text()
    assert "against the estimates for the machine they ran on" in tables
    assert "Table 2" in tables and "Table 5" in tables and "Table 3" not in tables
    for row in ("Teacher (MLM from random weights", "| Student S |", "From Scratch: Student S's architecture", "Student S, embeddings: copy",
                "Bag of words", "Majority class", "Sized down", "Stage times"):
        assert row in tables, row
    # the teacher ran once for both students (cache.enabled): its cache's cost and readers are reported
    assert re.search(r"\| cache/teacher-f100 \| [\d.]+ \| [\d,]+ \| [\d.]+ \| s, s@emb-copy \| 480 \| [\d.]+ \| -?[\d.]+ \|", tables), tables
    assert "teacher.cache=" in (out / "logs" / "distill" / "s.log").read_text()
    t5 = tables.split("## Table 5")[1].split("##")[0]
    assert "Δ hatespeech vs teacher" in t5 and len([ln for ln in t5.splitlines() if ln.startswith("| ")]) == 6  # head, 3 models, 2 reference

    # 4. nothing left: a rerun runs nothing; a changed student setting redoes that student and what depends on it only
    proc = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert "0 of 10 stages to run" in proc.stdout, proc.stdout
    results = out / "finetune" / "s" / "hatespeech" / "seed1" / "results.json"
    saved = results.read_bytes()
    results.unlink()  # an output deleted by hand: its stage is not done any more
    proc = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert f"(done, but {results} is gone: redo" in proc.stdout and "1 of 10 stages to run" in proc.stdout, proc.stdout
    results.write_bytes(saved)
    proc = subprocess.run(cmd + ["--dry-run", "students.s.settings.student.num_layers=2"], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=300)
    redo = sorted(ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("[") and "redo" in ln)
    assert redo == sorted(["distill/s", "finetune/s/hatespeech/seed1", "finetune/s@scratch/hatespeech/seed1", "distill/s@emb-copy",
                           "finetune/s@emb-copy/hatespeech/seed1", "report"]), proc.stdout


@pytest.mark.slow
def test_local_ranks_run_a_stage_as_several_processes(tmp_path, data_dir, corpus, mbert_tokenizer_dir):
    """ranks: 2 with the local launcher: each distill / finetune stage is two processes with RANK/WORLD_SIZE set."""
    hs = tmp_path / "hs"
    hs.mkdir()
    for split, n in (("train", 80), ("valid", 40), ("test", 40)):
        small_csv(data_dir / "hatespeech" / f"{split}.csv", hs / f"{split}.csv", n)
    study = tmp_path / "two.yaml"
    text = TINY.format(corpus=corpus, tokenizer=mbert_tokenizer_dir, hs=hs, student_steps=2).replace("name: tiny", "name: two\nranks: 2")
    study.write_text(text.split("students:")[0] + "baselines: {from_scratch: false}\n" + "finetune:" + text.split("finetune:")[1])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "ds_distil", "experiment", str(study), "--out", str(out)], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[2 ranks: RANK=0..1 WORLD_SIZE=2] ds-distil distill" in proc.stdout
    assert "distill: 2 rank(s)" in (out / "logs" / "teacher.log").read_text()
    res = json.loads((out / "finetune" / "teacher" / "hatespeech" / "seed1" / "results.json").read_text())
    assert res["world_size"] == 2 and res["model_name"] == "teacher"


def test_a_finetune_stage_stopped_on_other_ranks_is_redone_where_a_distillation_resumes(tmp_path, data_dir, capsys):
    """A study stopped on 2 ranks during a distill and a finetune stage, run again on 1: the distillation resumes on 1
    (elastic resume), the finetuning run, whose --resume keeps its own number of ranks, is redone from its start; on the
    ranks it ran on it resumes."""
    from ds_distil.schema.study import load_study
    from ds_distil.study.runner import Runner

    path = tmp_path / "cached.yaml"
    path.write_text(CACHED)
    runner = Runner(load_study(path, ["ranks=1"]), path, tmp_path / "o")
    ft, student = (next(s for s in runner.stages if s.command == c) for c in ("finetune", "distill"))
    for stage in (ft, student):
        runner.write_marker(stage, state="running", ranks=2)
    assert runner.resumes(student) and not runner.resumes(ft)
    runner.dry_run()
    out = capsys.readouterr().out
    assert f"{ft.name} (started earlier: redo (it ran on other ranks)" in out and f"{student.name} (started earlier: resume" in out
    runner.write_marker(ft, state="running", ranks=1)
    assert runner.resumes(ft)


def test_a_stage_marked_done_whose_output_is_gone_is_redone_and_said(tmp_path, data_dir, capsys):
    """A shard directory deleted by hand after its stage was marked done: it was "(done, skipped)", the study looked
    complete with a student missing."""
    from ds_distil.schema.study import load_study
    from ds_distil.study.runner import Runner

    path = tmp_path / "cached.yaml"
    path.write_text(CACHED)
    runner = Runner(load_study(path), path, tmp_path / "o")
    prepare = next(s for s in runner.stages if s.command == "prepare")
    runner.write_marker(prepare, state="done")
    assert runner.status(prepare) == "lost"
    runner.dry_run()
    assert f"{prepare.name} (done, but {prepare.out / 'manifest.json'} is gone: redo" in capsys.readouterr().out
    prepare.out.mkdir(parents=True)
    (prepare.out / "manifest.json").write_text("{}")
    assert runner.status(prepare) == "done"
