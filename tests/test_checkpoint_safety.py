"""Checkpoints and run directories of `ds-distil distill` (issue 14, cases 2, 3, 4, 5, 6, 8).

One finished 1-rank run (module fixture) is copied for each case: a crafted pickle is refused on
--resume and on export without running; a changed shuffle buffer or MLM probability is refused; a
truncated newest checkpoint falls back to the previous one and the resumed run ends bit-identical
to the uninterrupted one; a failed --overwrite leaves the old run byte-identical, a good one
replaces it at its first checkpoint. The 1- and 2-rank kill -9 / SIGUSR1 resume tests are in
test_distill.py.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, one_line_error, run_cli, tree

from ds_distil.runtime.checkpoint import MARKER, _prune, latest_tag

SMOKE = str(ROOT / "configs" / "smoke.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("checkpoint-safety")]  # one `finished` run, on one worker


def args(shards, **extra):
    values = {"data.shards": str(shards), "data.num_workers": 1, "data.verify_checksums": False, "train.max_steps": 6,
              "checkpoint.every_steps": 2, "checkpoint.keep": 5, "log.every_steps": 1,
              "deepspeed.config": str(ROOT / "ds_configs" / "zero2-fp32.json"), **extra}
    return ["--config", SMOKE, *(f"{k}={v}" for k, v in values.items())]


def distill(out, shards, *flags, **extra):
    return run_cli("distill", "--out", str(out), *flags, *args(shards, **extra), env=ENV, timeout=600)


@pytest.fixture(scope="module")
def finished(small_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = distill(out, small_shards)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in sorted((out / "checkpoints").glob("step*"))] == ["step00000002", "step00000004", "step00000006"]
    return out


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


def student_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "student" / "model.safetensors")


# ------------------------------------------------------------------------------------ case 2


def test_keep_zero_is_refused_before_anything_is_written(small_shards, tmp_path):
    one_line_error(distill(tmp_path / "r", small_shards, **{"checkpoint.keep": 0}), "checkpoint", "keep must be >= 1")
    assert not (tmp_path / "r").exists()


def test_pruning_never_deletes_the_newest_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        (ckpt / f"step{step:08d}").mkdir(parents=True)
        (ckpt / f"step{step:08d}" / MARKER).write_text("{}")
    _prune(ckpt, keep=0)  # config refuses keep=0; the pruning guards itself too
    assert latest_tag(ckpt) == "step00000006" and not (ckpt / "step00000002").exists()


# ------------------------------------------------------------------------------------ case 3


class _WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # what a crafted checkpoint does: run code while being unpickled
        return (builtins.open, (self.path, "w"))


def _plant(tag_dir: Path, name: str, trap: Path) -> None:
    """Add an object with a side-effecting __reduce__ to a checkpoint file, and make COMPLETE vouch for it
    (as a complete foreign checkpoint would), so only the unpickling stands between it and the code."""
    f = tag_dir / name
    state = torch.load(f, weights_only=False)
    state["planted"] = _WritesAFile(str(trap))
    torch.save(state, f)
    marker = json.loads((tag_dir / MARKER).read_text())
    marker["files"][name] = {"bytes": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    (tag_dir / MARKER).write_text(json.dumps(marker))


def test_crafted_checkpoint_is_refused_on_resume_and_export_without_running(run_copy, small_shards, tmp_path):
    trap = tmp_path / "code-ran"
    tag_dir = run_copy / "checkpoints" / "step00000006"
    for f in tag_dir.glob("*_states.pt"):  # DeepSpeed's files: the model states (with the optimizer's without ZeRO), ZeRO's partitions
        _plant(tag_dir, f.name, trap)
    torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=False)  # the trap works when unpickled
    assert trap.exists()
    trap.unlink()

    line = one_line_error(distill(run_copy, small_shards, "--resume"), "refusing to load", "step00000006", "run code")
    assert "builtins.open" in line or "io.open" in line
    assert not trap.exists()
    one_line_error(run_cli("export", "--run", str(run_copy), "--out", str(tmp_path / "exported"), env=ENV), "refusing to load")
    assert not trap.exists() and not (tmp_path / "exported").exists()


# ------------------------------------------------------------------------------------ case 6


def test_changed_sampling_or_masking_on_resume_is_refused(run_copy, small_shards):
    before = tree(run_copy)
    one_line_error(distill(run_copy, small_shards, "--resume", **{"data.shuffle_buffer": 500}),
                   "data.shuffle_buffer from 2000 to 500", "step00000006")
    one_line_error(distill(run_copy, small_shards, "--resume", **{"data.mlm_probability": 0.2}), "data.mlm_probability from 0.15 to 0.2")
    assert tree(run_copy) == before


# ---------------------------------------------------------------------------- cases 5 and 8


def test_truncated_newest_checkpoint_falls_back_and_the_run_ends_bit_identical(finished, run_copy, small_shards):
    shutil.rmtree(run_copy / "student")
    victim = run_copy / "checkpoints" / "step00000006" / "mp_rank_00_model_states.pt"
    victim.write_bytes(victim.read_bytes()[:4096])
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss/to')  # a line torn by a kill mid-write

    # a run holding the directory refuses this one, naming it; killed with SIGKILL, it blocks nothing
    code = "import sys, time\nfrom ds_distil.core.rundir import claim\nclaim(sys.argv[1], 'distill', in_place=True)\nprint('held', flush=True)\ntime.sleep(600)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_copy)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    one_line_error(distill(run_copy, small_shards, "--resume"), "in use by another ds-distil run", f"pid {holder.pid}")
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    # safe changes (logging and validation intervals, checkpoints kept) are accepted
    proc = distill(run_copy, small_shards, "--resume", **{"log.every_steps": 2, "log.eval_every_steps": 3, "checkpoint.keep": 4})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint step00000006 is damaged: mp_rank_00_model_states.pt has 4096 bytes" in proc.stderr
    assert "continuing from step00000004" in proc.stderr and "resumed from step 4" in proc.stderr
    assert "metrics.jsonl: dropped 1 unreadable line" in proc.stderr
    assert (run_copy / "checkpoints" / "step00000006.damaged").is_dir() and latest_tag(run_copy / "checkpoints") == "step00000006"
    a, b = student_weights(finished), student_weights(run_copy)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------ case 4


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(run_copy, small_shards, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    before = tree(run_copy)
    one_line_error(distill(run_copy, small_shards), "already holds checkpoints", "--resume", "--overwrite")
    one_line_error(distill(run_copy, small_shards, "--overwrite", "--resume"), "one of them")
    # fails at validation: the shards are longer than the student's positions
    one_line_error(distill(run_copy, small_shards, "--overwrite", **{"student.max_positions": 64}),
                   "data.seq_len 128 is longer than the student's 64 position embeddings")
    # fails after training started (NaN teacher): the new run's files existed, beside the old one
    nan_dir = tmp_path / "nan-teacher"
    nan_teacher = BertForMaskedLM(BertConfig(vocab_size=119547, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    with torch.no_grad():
        nan_teacher.bert.embeddings.LayerNorm.weight.fill_(float("nan"))
    nan_teacher.save_pretrained(str(nan_dir))
    AutoTokenizer.from_pretrained(str(small_shards / "tokenizer")).save_pretrained(str(nan_dir))
    one_line_error(distill(run_copy, small_shards, "--overwrite", **{"teacher.preset": "null", "teacher.pretrained": nan_dir,
                                                                     "train.max_nonfinite_steps": 2}), "NaN/inf")
    assert tree(run_copy) == before
    assert not list(tmp_path.glob(".run.ds-distil-*")), "the failed new run is removed"
    # a good one replaces the old run
    proc = distill(run_copy, small_shards, "--overwrite", **{"train.max_steps": 2, "checkpoint.every_steps": 1})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in sorted((run_copy / "checkpoints").glob("step*"))] == ["step00000001", "step00000002"]
    steps = [json.loads(line)["step"] for line in (run_copy / "metrics.jsonl").read_text().splitlines() if '"loss/total"' in line]
    assert (run_copy / "student" / "model.safetensors").is_file() and steps == [1, 2]  # the new run's log only (and its validation)
    assert json.loads((run_copy / ".ds-distil-run.json").read_text())["command"] == "distill"
    assert not list(tmp_path.glob(".run.ds-distil-*")) and not list(tmp_path.glob("run.replaced-*"))


# ------------------------------------------------------------------------------------ issue 25, class 5


def test_export_falls_back_from_a_checkpoint_whose_record_lists_nothing_and_never_reads_outside(run_copy, tmp_path):
    """A COMPLETE listing no files, with the model states gone, used to end export in DeepSpeed's FileNotFoundError; a
    COMPLETE naming ../../etc/shadow made a warning print that file's size."""
    shutil.rmtree(run_copy / "student")
    newest = run_copy / "checkpoints" / "step00000006"
    (newest / MARKER).write_text(json.dumps({"step": 6, "world_size": 1, "files": {}}))
    (newest / "mp_rank_00_model_states.pt").unlink()
    middle = run_copy / "checkpoints" / "step00000004"
    marker = json.loads((middle / MARKER).read_text())
    marker["files"]["../../../../etc/shadow"] = {"bytes": 1, "sha256": "0" * 64}
    (middle / MARKER).write_text(json.dumps(marker))
    opened = []
    real_stat = Path.stat

    def spy(self, *a, **k):
        if "shadow" in str(self):
            opened.append(str(self))
        return real_stat(self, *a, **k)

    from ds_distil.runtime.checkpoint import verify

    try:
        Path.stat = spy
        assert verify(middle) == f"its {MARKER} names a file outside the checkpoint (../../../../etc/shadow)"
    finally:
        Path.stat = real_stat
    assert opened == []
    proc = run_cli("export", "--run", str(run_copy), env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint step00000006 is damaged: mp_rank_00_model_states.pt" in proc.stderr  # (every missing file named)
    assert "checkpoint step00000004 is damaged: its COMPLETE names a file outside the checkpoint" in proc.stderr
    assert json.loads((run_copy / "student" / "ds_distil_export.json").read_text())["checkpoint"].endswith("step00000002")
