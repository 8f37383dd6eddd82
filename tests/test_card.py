"""The model card an export writes (ds_distil/distill/card.py), and the finetuning results `ds-distil report` adds to it.

The run directory here is built by hand from the same pieces a real run writes (resolved config,
trainer state, environment.json, ds_config.json, real shards); test_distill.py checks the card of a
real DeepSpeed run's export.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

from ds_distil.core.config import load, save, to_dict
from ds_distil.distill.card import FT_END, FT_START, add_results, split_card, write_card
from ds_distil.schema.distill import DistillConfig

TAG = "step00000030"
VAL = {"step": 30, "val/mlm_loss": 6.5, "val/perplexity": 665.141633, "val/mlm_accuracy": 0.125, "val/kl": 0.75,
       "val/top1_agreement": 0.2, "val/samples": 32.0, "val/masked_tokens": 561.0, "val/tokens": 4080.0, "val/seconds": 1.5}


def fake_run(tmp_path, shards, overrides=(), val=VAL, name="run", objective=None):
    """A run directory and its export, as `ds-distil distill` leaves them (the student a micro BERT). Without
    `objective` (a declaration) the checkpoint records none, as those written before objectives were."""
    from pathlib import Path

    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    shards = Path(shards)

    run = tmp_path / name
    cfg = load(DistillConfig, [], [f"data.shards={shards}", "teacher.pretrained=bert-base-multilingual-cased", "student.preset=micro",
                                   "train.micro_batch_size=8", *overrides])
    ckpt = run / "checkpoints" / TAG
    ckpt.mkdir(parents=True)
    save(cfg, run / "run_config.yaml")
    state = {"trainer": {"step": 30, "micro_steps": 30, "tokens": 61234, "samples": 480, "nonfinite_run": 0, "nonfinite_total": 0,
                         "val": val},
             "data": {"position": {"epoch": 0, "step": 15}, "layout": {"world_size": 2, "batch_size": 8}}, "config": to_dict(cfg)}
    if objective is not None:
        state["objective"] = objective
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    (run / "ds_config.json").write_text(json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}))
    (run / "environment.json").write_text(json.dumps({
        "versions": {"torch": "2.13.0", "deepspeed": "0.19.8", "transformers": "5.23.0", "ds-distil": "0.1.0", "git_commit": "abc1234"},
        "device": {"cpu": "Some CPU", "gpu": None}, "world_size": 2, "backend": "gloo", "teacher_dtype": "float32",
        "started_by": {"command": f"ds-distil distill --config configs/smoke.yaml --out {run}", "launcher": "torchrun", "world_size": 2}}))
    student = run / "student"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=119547, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=128)).save_pretrained(str(student))
    AutoTokenizer.from_pretrained(str(shards.resolve() / "tokenizer")).save_pretrained(str(student))
    (student / "ds_distil_export.json").write_text(json.dumps({"checkpoint": str(run / "checkpoints" / TAG)}))
    return run, student


def test_the_card_has_hub_metadata_and_says_what_the_run_recorded(small_shards, tmp_path):
    run, student = fake_run(tmp_path, small_shards)
    path = write_card(student, run, TAG)
    text = path.read_text(encoding="utf-8")
    meta, body = split_card(text)
    assert yaml.safe_load(text.split("---\n")[1]) == meta  # the front matter is plain YAML
    assert meta["language"] == ["tl"] and meta["license"] == "unknown" and "placeholder: set the license" in text
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "fill-mask"
    assert {"ds-distil", "distillation"} <= set(meta["tags"])
    assert meta["base_model"] == "bert-base-multilingual-cased" and "datasets" not in meta  # a local corpus has no hub id
    assert meta["model_name"] == "run (bert 2x64)"
    [entry] = meta["model-index"][0]["results"]
    assert entry["task"]["type"] == "fill-mask" and entry["dataset"]["split"] == "validation"
    assert {m["type"]: m["value"] for m in entry["metrics"]} == {"perplexity": 665.141633, "loss": 6.5, "accuracy": 0.125,
                                                                   "kl_divergence": 0.75, "agreement": 0.2}
    manifest = json.loads((small_shards / "manifest.json").read_text())
    train_tokens = manifest["splits"]["train"]["tokens"]
    for expected in ("# run (bert 2x64)", "2 layers, 64 hidden, 128 FFN, 2 heads, 512 positions", f"{train_tokens:,} tokens",
                     "`tl_corpus_combined.txt`", "30 optimizer steps", "61,234", "8 per rank x 1 accumulation x 2 rank(s) = 16",
                     "`0.5 * T^2 * KL(teacher || student) + 0.5 * MLM` at temperature T = 2.0", "| precision | student bf16 (DeepSpeed, ZeRO stage 2); teacher fp32 (auto) |",
                     "| validation perplexity | 665.1416 |", "| validation teacher-student top-1 agreement | 20.00% |",
                     "at step 30 (the exported step)", f"ds-distil distill --config configs/smoke.yaml --out {run}",
                     "on 2 rank(s), started by torchrun", FT_START, FT_END):
        assert expected in body, expected
    params = sum(p.numel() for p in __import__("transformers").AutoModelForMaskedLM.from_pretrained(str(student)).parameters())
    assert f"| parameters | {params / 1e6:.1f}M" in body
    # the directory still loads as a Hugging Face model, and the report names it as before cards existed
    from transformers import AutoModelForMaskedLM

    AutoModelForMaskedLM.from_pretrained(str(student))
    from ds_distil.model.info import display_name

    assert display_name(str(student)) == "run (bert 2x64)"


def test_mlm_only_and_no_validation(small_shards, tmp_path):
    run, student = fake_run(tmp_path, small_shards, ["teacher.enabled=false", "teacher.pretrained=null"], val={})
    meta, body = split_card(write_card(student, run, TAG).read_text(encoding="utf-8"))
    assert "distillation" not in meta["tags"] and "base_model" not in meta and "model-index" not in meta
    assert "trained with masked language modelling only" in body and "No validation figures" in body
    assert "KL" not in body.split("## Validation")[1].split("## Finetuning")[0]


def test_a_trimmed_vocabulary_is_named_and_relative_paths_are_found_from_where_the_run_started(small_shards, small_vocab, tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.chdir(small_shards.parent.parent)  # the run's config holds paths relative to here
    rel_shards, rel_vocab = small_shards.relative_to(small_shards.parent.parent), small_vocab.relative_to(small_shards.parent.parent)
    run, student = fake_run(tmp_path, rel_shards, [f"student.vocab={rel_vocab}"])
    env = json.loads((run / "environment.json").read_text())
    env["started_by"]["cwd"] = str(small_shards.parent.parent)
    (run / "environment.json").write_text(json.dumps(env))
    monkeypatch.chdir(tmp_path)  # `ds-distil export` from elsewhere
    body = split_card(write_card(student, run, TAG).read_text(encoding="utf-8"))[1]
    report = json.loads((small_vocab / "vocab_report.json").read_text())
    assert f"a target-language vocabulary (`{rel_vocab}`, {report['kept']:,} of the original 119,547 tokens" in body
    manifest = json.loads((small_shards / "manifest.json").read_text())
    assert f"training split: {manifest['splits']['train']['tokens']:,} tokens" in body


def fake_result(path, model, task, dataset, seed, score):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({
        "model": str(model), "model_name": __import__("ds_distil.model.info", fromlist=["display_name"]).display_name(str(model)), "task": task,
        "dataset": dataset, "metric": "f1" if task == "ner" else "accuracy", "score": score, "macro_f1": score / 2,
        "train_runtime_s": 12.0 + seed, "seed": seed, "data": {"files": {"test": {"sha256": "a" * 64}}}}))


def test_report_adds_finetuning_results_to_the_card_and_later_reports_merge(small_shards, tmp_path):
    from ds_distil.reporting.report import write_report

    run, student = fake_run(tmp_path, small_shards)
    write_card(student, run, TAG)
    _, other_student = fake_run(tmp_path, small_shards, name="other")  # someone else's README: never touched
    other_readme = b"# my own notes\n"
    (other_student / "README.md").write_bytes(other_readme)
    for seed, score in ((1, 0.70), (2, 0.74)):
        fake_result(tmp_path / "ft" / f"hs-{seed}", student, "hatespeech", "hatespeech", seed, score)
    fake_result(tmp_path / "ft" / "other-hs", other_student, "hatespeech", "hatespeech", 1, 0.5)
    write_report([str(tmp_path / "ft")], str(tmp_path / "report"))
    meta, body = split_card((student / "README.md").read_text(encoding="utf-8"))
    results = meta["model-index"][0]["results"]
    assert [r["task"]["type"] for r in results] == ["fill-mask", "text-classification"]  # the validation entry stays
    assert results[1]["metrics"][0]["value"] == pytest.approx(0.72) and results[1]["source"]["name"] == "ds-distil report"
    section = body.split(FT_START)[1].split(FT_END)[0]
    assert "| hatespeech | hatespeech | accuracy | 72.00 ± 2.83 | 36.00 ± 1.41 | 1, 2 | 13.50 ± 0.71 |" in section
    assert str(tmp_path / "report" / "report.md") in section
    assert (other_student / "README.md").read_bytes() == other_readme

    # a later report on another task adds its row and keeps the first; the same task and dataset is replaced
    fake_result(tmp_path / "ft2" / "ner-1", student, "ner", "uner", 1, 0.6)
    fake_result(tmp_path / "ft2" / "hs-3", student, "hatespeech", "hatespeech", 3, 0.8)
    write_report([str(tmp_path / "ft2")], str(tmp_path / "report2"))
    meta, body = split_card((student / "README.md").read_text(encoding="utf-8"))
    by_task = {r["task"]["name"]: r for r in meta["model-index"][0]["results"] if r["task"]["type"] != "fill-mask"}
    assert by_task["hatespeech"]["metrics"][0]["value"] == pytest.approx(0.8)
    assert by_task["ner"]["task"]["type"] == "token-classification" and by_task["ner"]["metrics"][0]["type"] == "f1"
    section = body.split(FT_START)[1].split(FT_END)[0]
    assert len(re.findall(r"^\| (hatespeech|ner) \|", section, re.M)) == 2
    assert "## Usage" in body and body.count(FT_START) == 1  # the rest of the card as it was
    from transformers import AutoModelForMaskedLM

    AutoModelForMaskedLM.from_pretrained(str(student))
    assert add_results(other_student, [{"task": "x", "dataset": "y", "metric": "accuracy", "score": {"mean": 1, "std": 0, "n": 1}}]) is False
    assert (other_student / "README.md").read_bytes() == other_readme
