"""slurm/*.sbatch against a real single-node SLURM started by tests/slurm/cluster.sh.

Skips where the SLURM packages are not installed (`.ci/run` installs them, and makes that skip a
failure)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT

HAVE_SLURM = shutil.which("slurmctld") is not None and shutil.which("munged") is not None
SCRIPTS = [*sorted((ROOT / "slurm").glob("*")), *sorted((ROOT / "tests" / "slurm").glob("*.sh")),
           *sorted((ROOT / "tests" / "multihost").glob("*.sh")), *sorted((ROOT / "scripts").glob("*.sh")),
           *sorted((ROOT / "benchmarks").glob("*.sh")),
           ROOT / ".ci" / "run"]
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]  # one throw-away cluster, on one worker


def require(tool: str, install: str):
    if shutil.which(tool) is None:
        msg = f"{tool} not installed ({install})"
        if os.environ.get("DS_DISTIL_REQUIRE_SLURM") == "1":
            pytest.fail(msg + "; DS_DISTIL_REQUIRE_SLURM=1 makes this a failure")
        pytest.skip(msg)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    for tool in ("slurmctld", "slurmd", "munged", "sbatch"):
        require(tool, "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge")
    d = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(["bash", str(ROOT / "tests" / "slurm" / "cluster.sh"), "start", str(d)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    env = {**os.environ, "SLURM_CONF": str(d / "slurm.conf"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    yield env
    subprocess.run(["bash", str(ROOT / "tests" / "slurm" / "cluster.sh"), "stop", str(d)], timeout=60)


def sbatch(env: dict, script: str, log: Path, ntasks: int = 1, **variables) -> str:
    out = subprocess.run(["sbatch", "--parsable", f"--ntasks={ntasks}", f"--output={log}", str(ROOT / "slurm" / script)],
                         capture_output=True, text=True, env={**env, **variables}, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def submit_distill(env, run_dir: Path, shards: Path, log: Path, steps: int) -> str:
    extra = (f"data.shards={shards} data.verify_checksums=false train.max_steps={steps} checkpoint.every_steps=10 "
             "log.every_steps=1 data.num_workers=1")
    return sbatch(env, "distill.sbatch", log, ntasks=2, CONFIG=str(ROOT / "configs" / "smoke.yaml"), RUN_DIR=str(run_dir), EXTRA=extra)


def job_field(env, job: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout
    return next((tok.split("=", 1)[1] for tok in out.split() if tok.startswith(field + "=")), "")


def wait_done(env, job: str, timeout: float = 400) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_field(env, job, "JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(1)
    raise AssertionError(f"job {job} did not finish in {timeout} s")


def wait_for(predicate, env, job: str, log: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        state = job_field(env, job, "JobState")
        assert time.time() < deadline and state in ("PENDING", "RUNNING"), f"{state}: " + (log.read_text()[-3000:] if log.exists() else "")
        time.sleep(0.1)


def signal_batch(env, job: str, sig: str = "USR1") -> None:
    subprocess.run(["scancel", f"--signal={sig}", "--batch", job], check=True, env=env)


def test_preempted_distill_job_checkpoints_requeues_and_ends_like_an_uninterrupted_one(cluster, small_shards, tmp_path):
    """Two signals (the second while the ranks are already stopping) -> one checkpoint, one requeue,
    the same final student as a job never signalled; a normal end is not requeued."""
    from safetensors.torch import load_file

    whole = submit_distill(cluster, tmp_path / "whole", small_shards, tmp_path / "whole.log", steps=40)
    run_dir, log = tmp_path / "preempted", tmp_path / "preempted.log"
    job = submit_distill(cluster, run_dir, small_shards, log, steps=40)
    assert wait_done(cluster, whole) == "COMPLETED", (tmp_path / "whole.log").read_text()[-3000:]
    assert job_field(cluster, whole, "Restarts") == "0" and "requeueing" not in (tmp_path / "whole.log").read_text()
    assert (tmp_path / "whole" / "student" / "model.safetensors").exists()

    metrics = run_dir / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 12, cluster, job, log)
    signal_batch(cluster, job)
    time.sleep(0.3)
    signal_batch(cluster, job)
    assert wait_done(cluster, job, timeout=600) == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    assert job_field(cluster, job, "Restarts") == "1"
    assert "got USR1: asking the ranks to stop" in text and "got USR1 again" in text
    for rank in (0, 1):  # once per rank: data-loader workers, signalled too, stay quiet
        assert text.count(f"[rank {rank}] WARNING ds_distil.core.signals: received SIGUSR1: will checkpoint") == 1, text[-3000:]
    assert "ranks exited with status 75" in text and "requeueing" in text
    stopped_at = int(text.split("stop requested by signal: checkpoint step")[1][:8])
    assert 12 <= stopped_at < 40
    assert "(restart 1)" in text and f"resumed from step {stopped_at}" in text and "done: student in" in text
    a, b = load_file(tmp_path / "whole" / "student" / "model.safetensors"), load_file(run_dir / "student" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def requeue_onto(env, job: str, **resources) -> None:
    """After `scancel --signal=USR1` made the job checkpoint and requeue itself: give it other resources while it waits
    to start again (SLURM holds a requeued job for cred_expire seconds), e.g. NumTasks=1, or NumNodes=1 on a test bed
    of several hosts (tests/multihost/, issue 38), as a cluster would when only those are free; NumNodes="1-1" where the
    job was given a range (its minimum is 1 already: the maximum must come down)."""
    deadline = time.time() + 120
    while not (job_field(env, job, "JobState") == "PENDING" and job_field(env, job, "Restarts") == "1"):
        assert time.time() < deadline, f"job {job} was not requeued: {job_field(env, job, 'JobState')}"
        time.sleep(0.1)
    for k, v in resources.items():  # one update each, in order: scontrol applies NumNodes before NumTasks within one
        subprocess.run(["scontrol", "update", f"JobId={job}", f"{k}={v}"], check=True, env=env, capture_output=True)
    for k, v in resources.items():  # a NumNodes range sets the bounds; the field shows the last allocation's count until it starts
        if not (k == "NumNodes" and "-" in str(v)):
            assert job_field(env, job, k) == str(v), (k, job_field(env, job, k))


def test_a_distill_job_requeued_onto_fewer_ranks_continues_with_its_global_batch(cluster, small_shards, small_vocab, tmp_path):
    """Issue 39: a job of 2 ranks (submitted with --nodes=1-2) is preempted and requeued onto 1 task: the requeued start
    runs 1 rank (from the allocation, not the first submission's SLURM_NTASKS), resumes the checkpoint of 2 with the
    same global batch (accumulation 1 -> 2) and finishes."""
    run_dir, log = tmp_path / "elastic", tmp_path / "elastic.log"
    extra = (f"data.shards={small_shards} student.vocab={small_vocab} data.verify_checksums=false train.max_steps=24 "
             "checkpoint.every_steps=50 log.every_steps=1 data.num_workers=1 log.eval_max_samples=16")
    out = subprocess.run(["sbatch", "--parsable", "--nodes=1-2", "--ntasks=2", f"--output={log}", str(ROOT / "slurm" / "distill.sbatch")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={**cluster, "CONFIG": str(ROOT / "configs" / "smoke.yaml"), "RUN_DIR": str(run_dir), "EXTRA": extra})
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    metrics = run_dir / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 6, cluster, job, log)
    signal_batch(cluster, job)
    requeue_onto(cluster, job, NumTasks=1)
    assert wait_done(cluster, job, timeout=600) == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    assert "(restart 0): nodes" in text and "| ranks 2 on cpu |" in text
    assert "(restart 1): nodes" in text and "| ranks 1 on cpu |" in text, text[-3000:]
    stopped_at = int(text.split("stop requested by signal: checkpoint step")[1][:8])
    assert f"resumed from step {stopped_at}" in text
    assert "resumed on 1 rank(s) (was 2): accumulation 1 -> 2, same global batch 16" in text
    assert "done: student in" in text and (run_dir / "student" / "model.safetensors").is_file()
    events = [json.loads(line) for line in metrics.read_text().splitlines() if '"event"' in line]
    assert [(e["step"], e["world_size"], e["was_world_size"]) for e in events] == [(stopped_at, 1, 2)]


def test_preempted_finetune_job_keeps_finished_runs_and_resumes_the_stopped_one(cluster, tmp_path):
    """USR1 while the second task trains: it checkpoints and exits 75, the job requeues, the finished task is skipped and the
    stopped one continues from its checkpoint (finetune --resume) to its results."""
    run_dir, log = tmp_path / "ft", tmp_path / "ft.log"
    job = sbatch(cluster, "finetune.sbatch", log, ntasks=2, MODEL="micro", TASKS="hatespeech pos", RUN_DIR=str(run_dir),
                 EXTRA="task.max_train_examples=2000 train.lr=0.001 train.epochs=1 task.max_length=64 log_every_steps=1 "
                       "checkpoint.every_steps=0 eval_every_steps=null")
    first = run_dir / "hatespeech" / "seed42" / "results.json"
    metrics = run_dir / "pos" / "seed42" / "metrics.jsonl"
    wait_for(lambda: first.exists() and metrics.exists() and len(metrics.read_text().splitlines()) >= 2, cluster, job, log)
    finished = first.read_text()
    signal_batch(cluster, job)  # pos is training (1,405 sentences: 22 steps)
    assert wait_done(cluster, job) == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    assert job_field(cluster, job, "Restarts") == "1", text[-3000:]
    assert "received SIGUSR1: will checkpoint after the current step and stop" in text
    stopped_at = int(text.split("stop requested by signal: checkpoint step")[1][:8])
    assert "pos seed 42: ranks exited with status 75" in text and "requeueing" in text
    assert "(restart 1): hatespeech seed 42: done earlier" in text and "(restart 1): pos seed 42: start" in text
    assert f"resumed from step {stopped_at}" in text
    assert first.read_text() == finished  # not redone
    pos = json.loads((run_dir / "pos" / "seed42" / "results.json").read_text())
    assert pos["task"] == "pos" and pos["world_size"] == 2 and 0 <= pos["score"] <= 1 and pos["resumed_at"] == [stopped_at]
    assert (run_dir / "pos" / "seed42" / "model" / "model.safetensors").is_file()
    report = (run_dir / "report" / "report.md").read_text()
    assert "hatespeech" in report and "pos" in report


def test_bench_job_writes_reports_and_the_results_page(cluster, tmp_path):
    log, results = tmp_path / "bench.log", tmp_path / "results"
    job = sbatch(cluster, "bench.sbatch", log, BENCHES="finetune_speed", RUN_DIR=str(tmp_path / "b"), RESULTS_DIR=str(results),
                 BENCH_ARGS="--models micro --tasks hatespeech --steps 1 --warmup 1")
    assert wait_done(cluster, job, timeout=300) == "COMPLETED", log.read_text()[-3000:]
    (report,) = results.glob("finetune_speed-quick_*.json")
    data = json.loads(report.read_text())
    assert [(r["model"], r["method"]) for r in data["rows"]] == [("micro", "ours"), ("micro", "reference")]
    assert all(r["step_s"] > 0 for r in data["rows"])
    assert data["command"] == "python -m benchmarks.finetune_speed --models micro --tasks hatespeech --steps 1 --warmup 1"
    assert report.stem in (results / "README.md").read_text()


BAD = {  # name: (script, variables, message in the job log)
    "missing config": ("distill.sbatch", {"CONFIG": "nowhere/run.yaml"}, "error: config nowhere/run.yaml does not exist"),
    "run dir not writable": ("distill.sbatch", {"RUN_DIR": "/proc/ds-distil-run"}, "error: cannot write to /proc/ds-distil-run (RUN_DIR)"),
    "more GPUs than the node has": ("distill.sbatch", {"GPUS_PER_NODE": "2"}, "error: asked for 2 GPU(s) per node but torch sees 0"),
    "GPU device without a GPU": ("finetune.sbatch", {"DEVICE": "gpu"}, "error: DEVICE=gpu but torch sees no GPU"),
    "unknown benchmark": ("bench.sbatch", {"BENCHES": "nope"}, "error: no benchmark benchmarks/nope.py"),
    "missing study": ("experiment.sbatch", {"STUDY": "nowhere/study.yaml"}, "error: study nowhere/study.yaml does not exist"),
}


def test_bad_input_fails_in_the_job_log_without_a_requeue_loop(cluster, tmp_path):
    jobs = {}
    for name, (script, variables, _) in BAD.items():
        base = {"CONFIG": str(ROOT / "configs" / "smoke.yaml"), "RUN_DIR": str(tmp_path / name.replace(" ", "-")),
                "RESULTS_DIR": str(tmp_path / "results")}
        jobs[name] = sbatch(cluster, script, tmp_path / f"{name}.log", **{**base, **variables})
    for name, job in jobs.items():
        state = wait_done(cluster, job, timeout=180)
        text = (tmp_path / f"{name}.log").read_text()
        assert state == "FAILED", (name, text)
        assert job_field(cluster, job, "ExitCode") == "2:0" and job_field(cluster, job, "Restarts") == "0", (name, text)
        assert BAD[name][2] in text and len(text.strip().splitlines()) == 1, (name, text)  # one line, nothing started


def lib(env, script: str, **variables) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"source slurm/lib.sh; {script}"], capture_output=True, text=True, cwd=ROOT,
                          env={**env, **variables}, timeout=60)


@pytest.mark.parametrize("nodelist", ["node[1-", "node[3-1]", ""])
def test_a_nodelist_that_cannot_be_expanded_is_refused(cluster, nodelist):
    proc = lib(cluster, "expand_nodes", SLURM_JOB_NODELIST=nodelist, SLURM_TASKS_PER_NODE="1")
    assert proc.returncode == 2 and f"error: cannot expand the nodelist '{nodelist}'" in proc.stdout, proc.stdout + proc.stderr


def test_hostfile_has_each_node_with_its_slots_and_the_first_node_is_master(cluster, tmp_path):
    variables = {"SLURM_JOB_NODELIST": "gpu[07-09],login2", "SLURM_TASKS_PER_NODE": "8(x3),2", "SLURM_JOB_NUM_NODES": "4",
                 "SLURM_JOB_ID": "1234"}
    proc = lib(cluster, f"expand_nodes; write_hostfile {tmp_path}/hostfile; echo $MASTER_ADDR:$MASTER_PORT", **variables)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "hostfile").read_text().splitlines() == ["gpu07 slots=8", "gpu08 slots=8", "gpu09 slots=8", "login2 slots=2"]
    assert proc.stdout.strip() == "gpu07:21234"
    proc = lib(cluster, "expand_nodes", **{**variables, "SLURM_TASKS_PER_NODE": "8(x2)"})
    assert proc.returncode == 2 and "does not match the 4 node(s)" in proc.stdout


def test_scripts_are_bash_n_and_shellcheck_clean():
    assert len(SCRIPTS) >= 6
    for script in SCRIPTS:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, (script, proc.stderr)
    require("shellcheck", "apt-get install -y shellcheck")
    proc = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout


STUDY = """
name: slurm-tiny
estimates: {{"*": 0.1}}
prepare: {{corpus: {corpus}, tokenizer: {tokenizer}, seq_len: 64, settings: {{max_docs: 300, workers: 1, samples_per_shard: 100}}}}
teacher:
  source: pretrain
  settings:
    student: {{preset: micro}}
    train: {{micro_batch_size: 4, max_steps: 40, lr: 0.001}}
    data: {{num_workers: 0, shuffle_buffer: 50}}
    checkpoint.every_steps: 2
    log.every_steps: 1
    deepspeed.config: ds_configs/zero2-fp32.json
finetune:
  seeds: [1]
  settings: {{train.max_steps: 2, train.micro_batch_size: 8, eval_batch_size: 64, task.max_length: 32}}
  tasks: {{hatespeech: {{data_dir: {hs}}}}}
"""


def test_study_job_is_requeued_when_signalled_and_resumes_the_study(cluster, tmp_path, data_dir, corpus, mbert_tokenizer_dir):
    """One job for the whole study: USR1 mid-distillation -> checkpoint, exit 75, requeue; the requeued
    job skips the finished stages, resumes the teacher and finishes with the tables."""
    hs = tmp_path / "hs"
    hs.mkdir()
    for split in ("train", "valid", "test"):
        lines = (data_dir / "hatespeech" / f"{split}.csv").read_text(encoding="utf-8").splitlines(keepends=True)
        (hs / f"{split}.csv").write_text("".join(lines[:81]), encoding="utf-8")
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(corpus=corpus, tokenizer=mbert_tokenizer_dir, hs=hs))
    run_dir, log = tmp_path / "study", tmp_path / "study.log"
    job = sbatch(cluster, "experiment.sbatch", log, STUDY=str(study), RUN_DIR=str(run_dir))
    metrics = run_dir / "teacher" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 6, cluster, job, log)
    signal_batch(cluster, job)
    assert wait_done(cluster, job, timeout=600) == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    assert job_field(cluster, job, "Restarts") == "1", text[-3000:]
    assert "stopped by SIGUSR1 at stage teacher" in text and "the study runner exited with status 75" in text and "requeueing" in text
    assert "(restart 1)" in text and "1 of 4 stages done earlier" in text and "teacher (resuming)" in text
    assert "srun --ntasks=1" in text  # the teacher ran as an srun step
    tlog = (run_dir / "logs" / "teacher.log").read_text()
    assert tlog.count("=== ") == 2 and "resumed from step" in tlog
    assert "done: " in text and "Table 2" in (run_dir / "report" / "tables.md").read_text()
