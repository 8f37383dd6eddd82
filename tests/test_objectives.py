"""Objectives are components: one declaration (terms, needs, own parameters, formula) reaches the step, validation,
metrics.jsonl, TensorBoard, the console, the checkpoint, the export and the model card, with none of them naming
a term. Shown with a test objective (helpers/extra_objective.py: KD + an `extra` term with a parameter of its own)
registered only in the process that runs it, as a contributor's new objective would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing

import pytest
import torch
from conftest import ROOT, one_line_error, run_cli

from ds_distil.core.config import from_dict
from ds_distil.core.errors import UserError
from ds_distil.distill import objectives
from ds_distil.distill.card import split_card
from ds_distil.schema.distill import DistillConfig, LossConfig

HELPER = ROOT / "tests" / "helpers" / "distill_run.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}


def test_the_schema_offers_exactly_the_registered_objectives():
    choices = typing.get_args(typing.get_type_hints(LossConfig)["objective"])
    assert set(choices) == {"auto", *objectives.OBJECTIVES}


def test_auto_is_kd_with_a_teacher_and_mlm_without():
    def cfg(**teacher):
        return from_dict(DistillConfig, {"data": {"shards": "-"}, "teacher": teacher})

    kd, mlm = objectives.build(cfg(preset="tiny")), objectives.build(cfg(enabled=False))
    assert (kd.name, [t.name for t in kd.terms], kd.teacher is not None) == ("kd", ["mlm", "kl"], True)
    assert (mlm.name, [t.name for t in mlm.terms], mlm.teacher) == ("mlm", ["mlm"], None)
    hidden = objectives.build(from_dict(DistillConfig, {"data": {"shards": "-"}, "teacher": {"preset": "tiny"}, "loss": {"a_hidden": 0.1}}))
    assert [t.name for t in hidden.terms] == ["mlm", "kl", "hidden"] and hidden.student.hidden == hidden.teacher.hidden == (-1,)
    assert hidden.declaration()["terms"][2]["per"] == "token"


def test_kd_refuses_a_pair_it_cannot_distil():
    from transformers import BertConfig

    kd = objectives.KD(LossConfig(a_hidden=0.5))
    with pytest.raises(UserError, match="loss.a_hidden needs equal hidden sizes \\(teacher 128, student 64\\)"):
        kd.bind(BertConfig(hidden_size=128), BertConfig(hidden_size=64))
    with pytest.raises(UserError, match="loss.objective kd distils from a teacher, but teacher.enabled is false"):
        kd.bind(None, BertConfig(hidden_size=64))


def test_an_objective_and_teacher_setting_that_disagree_are_one_line(small_shards, tmp_path):
    common = ["--config", str(ROOT / "configs" / "smoke.yaml"), f"data.shards={small_shards}", "data.num_workers=0"]
    one_line_error(run_cli("distill", "--out", str(tmp_path / "a"), *common, "loss.objective=kd", "teacher.enabled=false",
                           "teacher.preset=null", env=ENV), "loss.objective kd distils from a teacher")
    one_line_error(run_cli("distill", "--out", str(tmp_path / "b"), *common, "loss.objective=mlm", env=ENV),
                   "loss.objective mlm trains without a teacher, but teacher.enabled is true")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_new_objective_reaches_every_output_from_its_declaration(small_shards, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(HELPER), "--config", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out),
                           "--probe", str(tmp_path / "probe.pt"), "--objective-extra", f"data.shards={small_shards}",
                           "data.num_workers=1", "data.verify_checksums=false", "train.max_steps=6", "log.every_steps=2",
                           "log.eval_every_steps=3", "log.eval_max_samples=24", "checkpoint.every_steps=3"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train, val = [r for r in lines if "loss/total" in r], [r for r in lines if "val/mlm_loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6] and [r["step"] for r in val] == [3, 6]
    assert all(r["loss/extra"] > 0 for r in train) and all(r["val/extra"] > 0 for r in val)
    for r in train:  # the total is the declared weighted sum of the terms
        assert r["loss/total"] == pytest.approx(0.5 * r["loss/mlm"] + 0.5 * 4.0 * r["loss/kl"] + 0.01 * r["loss/extra"], rel=1e-5)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(out / "tensorboard"))
    tb.Reload()
    assert {"loss/extra", "val/extra", "loss/kl", "val/kl"} <= set(tb.Tags()["scalars"])
    assert "| extra " in next(m for m in proc.stderr.splitlines() if "step 2/6 | loss" in m)
    assert "| extra " in next(m for m in proc.stderr.splitlines() if "step 6 validation" in m)
    assert "objective extra: `0.5 * T^2 * KL(teacher || student) + 0.5 * MLM` at temperature T = 2.0, per masked token, + 0.01 * extra" in proc.stderr

    # the objective's parameter is trained in the engine, recorded in the checkpoint, and left out of the export
    probe = torch.load(tmp_path / "probe.pt")
    assert {"objective.weight", "objective.bias"} <= set(probe["engine_keys"])
    state = json.loads((out / "checkpoints" / "step00000006" / "trainer_state.json").read_text())
    assert state["objective"]["name"] == "extra" and [t["name"] for t in state["objective"]["terms"]] == ["mlm", "kl", "extra"]
    from safetensors import safe_open

    with safe_open(str(out / "student" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith("objective") for k in keys) and "bert.embeddings.word_embeddings.weight" in keys
    from transformers import AutoModelForMaskedLM

    AutoModelForMaskedLM.from_pretrained(str(out / "student"))

    # the model card: the formula, and the term among the validation figures and the Hub's model-index
    meta, body = split_card((out / "student" / "README.md").read_text(encoding="utf-8"))
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["validation extra term of the test objective"] == pytest.approx(val[-1]["val/extra"], rel=1e-5)
    assert "+ 0.01 * extra (objective `extra`)" in body and "| validation extra term of the test objective |" in body
