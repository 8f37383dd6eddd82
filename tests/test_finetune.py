"""`ds-distil finetune` with real processes, and `ds-distil report`."""

from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import ROOT, run_cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
FIELDS = {"model", "task", "metric", "score", "valid_score", "train_runtime_s", "samples_per_s", "device", "seed", "config"}
pytestmark = pytest.mark.slow


def finetune_cmd(out, model, task, *overrides, ranks=1):
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
              "--master_port", str(29300 + (os.getpid() + len(str(out))) % 90), "-m", "ds_distil"] if ranks > 1 else [sys.executable, "-m", "ds_distil"]
    return [*launch, "finetune", "--model", model, "--task", task, "--out", str(out), *overrides]


def test_two_ranks_finetune_hatespeech_and_report(tmp_path, data_dir):
    import subprocess

    common = ["train.max_steps=6", "train.micro_batch_size=8", "task.max_length=48", "eval_batch_size=128",
              f"task.data_dir={data_dir / 'hatespeech'}", f"task.tokenizer={data_dir / 'mbert_tokenizer'}"]
    for model, ranks in (("micro", 2), ("tiny", 1)):
        proc = subprocess.run(finetune_cmd(tmp_path / model, model, "hatespeech", *common, ranks=ranks), capture_output=True,
                              text=True, env=ENV, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "micro" / "results.json").read_text())
    assert FIELDS <= set(res) and res["world_size"] == 2 and res["task"] == "hatespeech" and res["metric"] == "accuracy"
    assert 0.0 <= res["score"] <= 1.0 and 0.0 <= res["valid_score"] <= 1.0 and res["train_runtime_s"] > 0
    assert res["steps"] == 6 and res["config"]["train"]["micro_batch_size"] == 8
    assert (tmp_path / "micro" / "finetune_config.yaml").exists() and list((tmp_path / "micro" / "tensorboard").glob("events.*"))

    # the table: rows per model, score and runtime per task, speedup against a chosen baseline row
    rep = run_cli("report", "--runs", str(tmp_path / "micro"), str(tmp_path / "tiny"), "--out", str(tmp_path / "report"),
                  "--baseline", "tiny")
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| micro |" in md and "| tiny |" in md and "hatespeech score" in md and "avg speedup vs tiny" in md
    table = json.loads((tmp_path / "report" / "report.json").read_text())["table"]
    tiny = next(r for r in table["rows"] if r["model"] == "tiny")
    assert tiny["speedup"] == 1.0
    assert (tmp_path / "report" / "report.png").stat().st_size > 1000


def test_finetune_refusals(tmp_path, data_dir):
    proc = run_cli("finetune", "--model", "micro", "--task", "sentiment", "--out", str(tmp_path / "x"), env=ENV)
    assert proc.returncode == 2 and "unknown task 'sentiment'" in proc.stderr
    no_tok = tmp_path / "model-without-tokenizer"
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(str(no_tok))
    proc = run_cli("finetune", "--model", str(no_tok), "--task", "hatespeech", "--out", str(tmp_path / "y"),
                   f"task.data_dir={data_dir / 'hatespeech'}", env=ENV)
    assert proc.returncode == 2 and "has no tokenizer files" in proc.stderr
