"""A finetuning run that stops and continues (issue 40): killed with SIGKILL after a checkpoint and resumed, it ends
bit-identical to a run never stopped (dropout on, train.keep=best's snapshot across the stop); what --out allows (a
stopped run without --resume, a changed setting on --resume, a finished run, an --overwrite that fails at set-up)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, one_line_error, run_cli, tree

from ds_distil.runtime.checkpoint import MARKER, latest_tag

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
pytestmark = pytest.mark.slow


@pytest.fixture
def tweets(tmp_path, data_dir):
    """A user's small CSV set: the first 120 / 40 / 40 rows of Hatespeech's files."""
    d = tmp_path / "tweets"
    d.mkdir()
    for split, n in (("train", 120), ("valid", 40), ("test", 40)):
        lines = (data_dir / "hatespeech" / f"{split}.csv").read_text(encoding="utf-8").splitlines(keepends=True)
        (d / f"{split}.csv").write_text("".join(lines[: n + 1]), encoding="utf-8")
    return d


def metrics(out) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_finetune_killed_and_resumed_equals_an_uninterrupted_one(tweets, tmp_path, data_dir):
    # checkpoints at 4 and 8, validation at 3, 6, 9 (a snapshot of the best so far each time it improves), losses logged
    # every 5 steps: the window open at the checkpoint, and the best model's snapshot, must come back as they were
    common = ["--model", "micro", "--task", "csv", f"task.data_dir={tweets}", f"task.tokenizer={data_dir / 'mbert_tokenizer'}",
              "train.max_steps=12", "train.micro_batch_size=8", "train.lr=0.002", "train.keep=best", "checkpoint.every_steps=4",
              "eval_every_steps=3", "log_every_steps=5"]
    cmd = [sys.executable, "-m", "ds_distil", "finetune"]
    whole = subprocess.run([*cmd, "--out", str(tmp_path / "whole"), *common], capture_output=True, text=True, env=ENV, cwd=ROOT,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(out), *common], env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step00000004" / MARKER).exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists() and not (out / "model").exists()
    assert latest_tag(out / "checkpoints") in ("step00000004", "step00000008")
    # watched while it ran: its console log, TensorBoard and metrics are in DIR, not in a hidden staging directory
    assert (out / "finetune.log").is_file() and list((out / "tensorboard").glob("events.*")) and (out / "metrics.jsonl").is_file()

    one_line_error(run_cli("finetune", "--out", str(out), *common, env=ENV), "holds the checkpoints of a stopped finetuning run",
                   "pass --resume")
    one_line_error(run_cli("finetune", "--out", str(out), "--resume", *common, "train.lr=0.5", env=ENV),
                   "--resume would change train.lr from 0.002 to 0.5")
    resumed = run_cli("finetune", "--out", str(out), "--resume", *common, env=ENV, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step " in resumed.stderr

    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "whole" / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    assert metrics(tmp_path / "whole") == metrics(out)  # every loss, learning rate and validation, once each
    assert (tmp_path / "whole" / "predictions" / "test.jsonl").read_bytes() == (out / "predictions" / "test.jsonl").read_bytes()
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "whole", out))
    for key in ("score", "valid_score", "evaluation", "keep", "validation_curve", "steps", "baselines"):
        assert ra[key] == rb[key], key
    assert [p["step"] for p in ra["validation_curve"]] == [3, 6, 9, 12] and ra["keep"]["setting"] == "best"
    assert ra["resumed_at"] == [] and rb["resumed_at"] in ([4], [8]) and not (out / "checkpoints").exists()

    # a finished run: kept without --overwrite; --resume has nothing to do; an --overwrite refused at set-up leaves it whole
    one_line_error(run_cli("finetune", "--out", str(out), *common, env=ENV), "holds a finished finetuning run", "--overwrite")
    again = run_cli("finetune", "--out", str(out), "--resume", *common, env=ENV)
    assert again.returncode == 0 and "nothing to resume" in again.stderr and f"test accuracy {rb['score']:.4f}" in again.stdout
    before = tree(out)
    one_line_error(run_cli("finetune", "--out", str(out), "--overwrite", *common, "task.text_column=tweet", env=ENV), "no column 'tweet'")
    assert tree(out) == before and not list(tmp_path.glob(".killed.ds-distil-new-*"))
