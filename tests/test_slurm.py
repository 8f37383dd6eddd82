"""slurm/distill.sbatch against a real single-node SLURM started by tests/slurm/cluster.sh.

Skips where the SLURM packages are not installed (`.ci/run` installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT

HAVE_SLURM = shutil.which("slurmctld") is not None and shutil.which("munged") is not None
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def slurm_installed():
    if not HAVE_SLURM:
        msg = "SLURM not installed (apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge)"
        if os.environ.get("DS_DISTIL_REQUIRE_SLURM") == "1":
            pytest.fail(msg + "; DS_DISTIL_REQUIRE_SLURM=1 makes this a failure")
        pytest.skip(msg)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(["bash", str(ROOT / "tests" / "slurm" / "cluster.sh"), "start", str(d)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    env = {**os.environ, "SLURM_CONF": str(d / "slurm.conf")}
    yield env
    subprocess.run(["bash", str(ROOT / "tests" / "slurm" / "cluster.sh"), "stop", str(d)], timeout=60)


def submit(env, run_dir: Path, shards: Path, log: Path, steps: int) -> str:
    job_env = {**env, "CONFIG": str(ROOT / "configs" / "smoke.yaml"), "RUN_DIR": str(run_dir),
               "PYTHON": str(Path(os.sys.executable)), "EXTRA": f"data.shards={shards} data.verify_checksums=false "
               f"train.max_steps={steps} checkpoint.every_steps=0 log.every_steps=1 data.num_workers=1"}
    out = subprocess.run(["sbatch", "--parsable", "--ntasks=2", f"--output={log}", str(ROOT / "slurm" / "distill.sbatch")],
                         capture_output=True, text=True, env=job_env, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def job_field(env, job: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout
    return next((tok.split("=", 1)[1] for tok in out.split() if tok.startswith(field + "=")), "")


def wait_done(env, job: str, timeout: float = 400) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_field(env, job, "JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return state
        time.sleep(1)
    raise AssertionError(f"job {job} did not finish in {timeout} s")


def test_preempted_job_checkpoints_requeues_and_ends_like_an_uninterrupted_one(cluster, small_shards, tmp_path):
    from safetensors.torch import load_file

    whole = submit(cluster, tmp_path / "whole", small_shards, tmp_path / "whole.log", steps=40)
    assert wait_done(cluster, whole) == "COMPLETED", (tmp_path / "whole.log").read_text()[-3000:]
    assert job_field(cluster, whole, "Restarts") == "0"
    assert (tmp_path / "whole" / "student" / "model.safetensors").exists()

    run_dir, log = tmp_path / "preempted", tmp_path / "preempted.log"
    job = submit(cluster, run_dir, small_shards, log, steps=40)
    deadline = time.time() + 300
    while not ((run_dir / "metrics.jsonl").exists() and len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 5):
        assert time.time() < deadline and job_field(cluster, job, "JobState") in ("PENDING", "RUNNING"), log.read_text()[-3000:]
        time.sleep(0.2)
    signalled = time.time()
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, env=cluster)
    assert wait_done(cluster, job, timeout=600) == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    assert job_field(cluster, job, "Restarts") == "1"
    assert "got USR1" in text and "ranks exited with status 75" in text and "requeueing" in text
    assert "(restart 1)" in text and "resumed from step" in text
    assert time.time() - signalled < 600
    a, b = load_file(tmp_path / "whole" / "student" / "model.safetensors"), load_file(run_dir / "student" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bad_config_fails_in_the_log_without_a_requeue_loop(cluster, tmp_path):
    log = tmp_path / "bad.log"
    env = {**cluster, "CONFIG": str(tmp_path / "missing.yaml"), "RUN_DIR": str(tmp_path / "r")}
    out = subprocess.run(["sbatch", "--parsable", "--ntasks=1", f"--output={log}", str(ROOT / "slurm" / "distill.sbatch")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    job = out.stdout.strip().split(";")[0]
    assert wait_done(cluster, job, timeout=120) == "FAILED"
    assert job_field(cluster, job, "Restarts") == "0"
    assert "error: config" in log.read_text() and "does not exist" in log.read_text()
