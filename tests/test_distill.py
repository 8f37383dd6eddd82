"""`ds-distil distill` end to end with real processes: launchers, ZeRO-2 over 2 ranks, resume, export."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, free_port, run_cli

from ds_distil.runtime.checkpoint import MARKER, latest_tag

HELPER = ROOT / "tests" / "helpers" / "distill_run.py"
SMOKE = str(ROOT / "configs" / "smoke.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
pytestmark = pytest.mark.slow


def base_overrides(shards, **extra):
    values = {"data.shards": str(shards), "data.num_workers": 1, "data.verify_checksums": False,
              "deepspeed.config": str(ROOT / "ds_configs" / "zero2-fp32.json"), "log.every_steps": 5, "log.eval_max_samples": 32,
              **extra}
    return [f"{k}={v}" for k, v in values.items()]


def run(cmd, timeout=600):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def metric_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[float]:
    return [r["loss/total"] for r in metric_lines(run_dir) if "loss/total" in r]


def validations(run_dir: Path) -> list[dict]:
    """The validation lines of metrics.jsonl, without their timings."""
    return [{k: v for k, v in r.items() if k not in ("time", "val/seconds")} for r in metric_lines(run_dir) if "val/mlm_loss" in r]


def export_logits_in_clean_process(student_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    """Load the export with transformers alone (no ds_distil import) and return its logits."""
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForMaskedLM, AutoTokenizer\n"
        "m = AutoModelForMaskedLM.from_pretrained(sys.argv[1]).eval()\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "assert len(tok) == m.config.vocab_size and tok.convert_ids_to_tokens(tok.mask_token_id) == '[MASK]'\n"
        "ids = torch.load(sys.argv[2])\n"
        "assert 'ds_distil' not in sys.modules\n"
        "with torch.no_grad():\n"
        "    torch.save(m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, sys.argv[3])\n"
    )
    torch.save(ids, student_dir.parent / "ids.pt")
    run([sys.executable, "-c", code, str(student_dir), str(student_dir.parent / "ids.pt"), str(student_dir.parent / "logits.pt")])
    return torch.load(student_dir.parent / "logits.pt")


def test_deepspeed_launcher_two_ranks_smoke_config(small_shards, tmp_path):
    out = tmp_path / "run"
    proc = run([str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", free_port(), "--module",
                "ds_distil", "distill", "--config", SMOKE, "--out", str(out),
                *base_overrides(small_shards, **{"train.max_steps": 30, "checkpoint.every_steps": 15, "log.eval_every_steps": 15})])
    for name in ("run_config.yaml", "ds_config.json", "environment.json", "metrics.jsonl", "student/config.json",
                 "student/model.safetensors", "student/tokenizer.json", "checkpoints/latest"):
        assert (out / name).exists(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    ds = json.loads((out / "ds_config.json").read_text())
    assert ds["train_batch_size"] == 8 * 1 * 2 and ds["zero_optimization"]["stage"] == 2
    assert json.loads((out / "environment.json").read_text())["world_size"] == 2
    ls = losses(out)
    assert len(ls) == 6 and sum(ls[-2:]) < sum(ls[:2]) - 0.3, f"the loss did not fall: {ls}"
    scalars = [r for r in metric_lines(out) if "loss/total" in r][-1]
    for key in ("loss/kl", "loss/mlm", "lr", "grad_norm", "throughput/tokens_per_s", "cpu/rss_gib"):
        assert key in scalars, key
    # validation every 15 steps and at the end, on the held-out split: metrics.jsonl, TensorBoard, the console, the checkpoint
    vals = validations(out)
    assert [v["step"] for v in vals] == [15, 30], vals
    for v in vals:
        assert v.keys() >= {"val/mlm_loss", "val/perplexity", "val/mlm_accuracy", "val/kl", "val/top1_agreement"}
        assert v["val/samples"] == 32 and v["val/perplexity"] == pytest.approx(math.exp(v["val/mlm_loss"]))
    assert vals[1]["val/mlm_loss"] < vals[0]["val/mlm_loss"], vals
    assert "step 30 validation | mlm loss" in proc.stderr and "validation: 32 of the 118 samples of the held-out split" in proc.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("val/perplexity")] == [15, 30]
    saved = json.loads((out / "checkpoints" / "step00000030" / "trainer_state.json").read_text())["trainer"]["val"]
    assert saved["step"] == 30 and saved["val/mlm_loss"] == vals[1]["val/mlm_loss"]
    assert (out / "checkpoints" / "latest").read_text() == "step00000030"
    assert [p.name for p in sorted((out / "checkpoints").glob("step*"))] == ["step00000015", "step00000030"]
    ids = torch.randint(1000, 5000, (2, 12))
    logits = export_logits_in_clean_process(out / "student", ids)
    assert logits.shape == (2, 12, 119547) and torch.isfinite(logits).all()
    # the model card: Hub metadata, and what the run recorded (test_card.py checks the rest)
    from ds_distil.distill.card import split_card

    meta, body = split_card((out / "student" / "README.md").read_text(encoding="utf-8"))
    assert meta["language"] == ["tl"] and "distillation" in meta["tags"] and meta["model_name"] == "run (bert 2x64)"
    [val_entry] = meta["model-index"][0]["results"]
    assert {m["type"]: m["value"] for m in val_entry["metrics"]}["perplexity"] == round(vals[1]["val/perplexity"], 6)
    assert "30 optimizer steps" in body and "at step 30 (the exported step)" in body and "on 2 rank(s), started by deepspeed" in body
    assert f"ds-distil distill --config {SMOKE} --out {out}" in body
    # `ds-distil export` of an earlier checkpoint: its own step and validation on the card
    proc = run_cli("export", "--run", str(out), "--tag", "step00000015", "--out", str(tmp_path / "at15"), env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body15 = split_card((tmp_path / "at15" / "README.md").read_text(encoding="utf-8"))[1]
    assert "15 optimizer steps" in body15 and "at step 15 (the exported step)" in body15
    from safetensors.torch import load_file

    early, final = load_file(tmp_path / "at15" / "model.safetensors"), load_file(out / "student" / "model.safetensors")
    assert early.keys() == final.keys() and not all(torch.equal(early[k], final[k]) for k in early)


@pytest.mark.parametrize("trimmed", [False, True], ids=["full-vocab-kd", "trimmed-vocab-tinybert"])
def test_two_zero2_ranks_equal_one_rank_with_the_same_global_batch(small_shards, small_vocab, tmp_path, trimmed):
    """The trimmed run also distils with TinyBERT's objective: its projection (64 -> 128) is reduced over the ranks too."""
    extra = {"student.vocab": str(small_vocab), "student.embeddings": "teacher-pca", "loss.objective": "tinybert"} if trimmed else {}
    common = base_overrides(small_shards, **{"train.max_steps": 8, "checkpoint.every_steps": 0, "student.dropout": 0.0,
                                             "data.shuffle": False, **extra})
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(), str(HELPER),
         "--config", SMOKE, "--out", str(tmp_path / "two"), "--probe", str(tmp_path / "two.pt"),
         *common, "train.micro_batch_size=4"])
    run([sys.executable, str(HELPER), "--config", SMOKE, "--out", str(tmp_path / "one"), "--probe", str(tmp_path / "one.pt"),
         "--merge-ranks", "2", *common, "train.micro_batch_size=8"])
    two, one = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    # validation at the end: each rank its share of the held-out samples, then summed; the weights agree to ~1e-5
    val_two, val_one = validations(tmp_path / "two"), validations(tmp_path / "one")
    assert len(val_two) == len(val_one) == 1 and val_two[0].keys() == val_one[0].keys()
    for key, value in val_one[0].items():
        assert val_two[0][key] == pytest.approx(value, rel=1e-4), key
    moved = 0
    for name, p in one["student"].items():
        assert torch.allclose(p, two["student"][name], rtol=1e-4, atol=1e-6), name
        moved += 1
    assert moved > 10
    assert one["objective"].keys() == two["objective"].keys() == ({"objective.projection.weight", "objective.projection.bias"} if trimmed else set())
    for name, p in one["objective"].items():
        assert torch.allclose(p, two["objective"][name], rtol=1e-4, atol=1e-6), name
    # the teacher is bit-identical after training, and the student did train
    assert two["teacher_before"] == two["teacher_after"] and one["teacher_before"] == one["teacher_after"]
    # the export, loaded by transformers alone, gives the trained student's logits
    logits = export_logits_in_clean_process(tmp_path / "two" / "student", two["ids"])
    assert torch.allclose(logits, two["logits"], atol=1e-5)
    if trimmed:  # the export carries the trimmed tokenizer, and is that much smaller
        assert logits.shape[-1] == json.loads((small_vocab / "vocab_report.json").read_text())["kept"] < 119547
        # no projection in the export; the model card names the objective and its layer map
        assert any(k.startswith("objective.") for k in two["engine_keys"])  # trained in the engine
        from safetensors import safe_open

        with safe_open(str(tmp_path / "two" / "student" / "model.safetensors"), framework="pt") as f:
            assert not any("objective" in k or "projection" in k for k in f.keys())
        card = (tmp_path / "two" / "student" / "README.md").read_text(encoding="utf-8")
        assert "layer map g (uniform, student <- teacher): 1 <- 1, 2 <- 2" in card and "(objective `tinybert`)" in card


@pytest.fixture(scope="module")
def teacher_cache(small_shards, small_vocab, tmp_path_factory) -> Path:
    """A teacher cache of small_shards over small_vocab from a tiny random teacher, K = 8 (built by the command)."""
    cache = tmp_path_factory.mktemp("teacher-cache") / "cache"
    built = run_cli("teacher-cache", "--out", str(cache), f"data.shards={small_shards}", "teacher.preset=tiny", f"vocab={small_vocab}",
                    "cache.k=8", env=ENV)
    assert built.returncode == 0 and "KiB per sample record, K = 8" in built.stdout, built.stderr[-2000:]
    return cache


def test_two_ranks_distilling_from_a_teacher_cache_equal_one_rank_and_a_mismatched_run_is_refused(small_shards, small_vocab,
                                                                                                  teacher_cache, tmp_path):
    """Issue 24: a cache built once (a trimmed vocabulary, a tiny random teacher), then distilled from on 2 ZeRO-2 ranks and
    on 1 rank with the same global batches: the same losses and weights, the teacher never built for training; a run
    whose settings differ from what the cache was made for is refused in one line naming the difference."""
    cache = teacher_cache
    cached = {"student.vocab": str(small_vocab), "teacher.cache": str(cache), "teacher.preset": "tiny", "data.masking": "static"}
    common = base_overrides(small_shards, **{"train.max_steps": 8, "checkpoint.every_steps": 0, "student.dropout": 0.0,
                                             "data.shuffle": False, **cached})
    two = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(), str(HELPER),
               "--config", SMOKE, "--out", str(tmp_path / "two"), "--probe", str(tmp_path / "two.pt"), *common, "train.micro_batch_size=4"])
    run([sys.executable, str(HELPER), "--config", SMOKE, "--out", str(tmp_path / "one"), "--probe", str(tmp_path / "one.pt"),
         "--merge-ranks", "2", *common, "train.micro_batch_size=8", "teacher.cache_validation=live"])
    assert "teacher: not loaded; its sampled targets come from the cache" in two.stderr
    # validation: against the cache's held-out copy (no top-1 agreement), or against the live teacher named beside it
    val_two, val_one = validations(tmp_path / "two"), validations(tmp_path / "one")
    assert val_two and val_one and "val/top1_agreement" not in val_two[-1] and 0 <= val_one[-1]["val/top1_agreement"] <= 1
    assert val_one[-1]["val/perplexity"] == pytest.approx(val_two[-1]["val/perplexity"], rel=1e-4)
    kl = [r["loss/kl"] for r in metric_lines(tmp_path / "two") if "loss/kl" in r]
    assert kl and all(math.isfinite(x) for x in kl)
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    one_p, two_p = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for name, p in one_p["student"].items():
        assert torch.allclose(p, two_p["student"][name], rtol=1e-4, atol=1e-6), name
    assert two_p["teacher_before"] is None  # no live teacher in the run
    card = (tmp_path / "two" / "student" / "README.md").read_text(encoding="utf-8")
    assert f"through its teacher cache `{cache}` (8 sampled targets per masked token" in card

    def refused(*overrides):
        proc = run_cli("distill", "--config", SMOKE, "--out", str(tmp_path / "r"), *common, *overrides, env=ENV)
        assert proc.returncode == 2, proc.stderr[-2000:]
        return [line for line in proc.stderr.splitlines() if "error:" in line][-1]

    assert "was made for temperature = 2.0, but this run has 3.0" in refused("loss.temperature=3.0")
    assert "was made for masking.seed = 0, but this run has 1" in refused("data.seed=1")
    assert "set data.masking=static" in refused("data.masking=dynamic")
    assert "was made for teacher_sha256 = " in refused("train.seed=7")  # another random teacher
    assert "was made for vocab.kind = trimmed, but this run has full" in refused("student.vocab=null")
    assert "needs the live teacher's hidden states or attention" in refused("loss.objective=tinybert")


def test_a_run_from_a_teacher_cache_killed_and_resumed_equals_an_uninterrupted_one(small_shards, small_vocab, teacher_cache, tmp_path):
    """SIGKILL after the first checkpoint of a run distilling from a cache, then --resume: bit-identical to a run that was
    not interrupted (the stream's position carries the cache's copy and slot order; dropout on)."""
    # (logged every 3 steps: a window never spans the checkpoint, so both runs log the same means)
    common = ["--config", SMOKE, *base_overrides(small_shards, **{"train.max_steps": 12, "checkpoint.every_steps": 6, "log.every_steps": 3,
                                                                   "student.vocab": str(small_vocab), "teacher.cache": str(teacher_cache),
                                                                   "teacher.preset": "null", "data.masking": "static"})]
    cmd = [sys.executable, "-m", "ds_distil", "distill"]
    run([*cmd, "--out", str(tmp_path / "whole"), *common])
    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(out), *common], env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step00000006" / MARKER).exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "student").exists()
    resumed = run([*cmd, "--out", str(out), "--resume", *common])
    assert "resumed from step 6" in resumed.stderr
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "whole" / "student" / "model.safetensors"), load_file(out / "student" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert losses(tmp_path / "whole") == losses(out) and validations(tmp_path / "whole") == validations(out)


def torchrun_distill(out, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
            "-m", "ds_distil", "distill", "--out", str(out), *args]


@pytest.mark.parametrize("trimmed", [False, True], ids=["full-vocab-kd", "trimmed-vocab-tinybert"])
def test_killed_and_resumed_two_rank_run_equals_an_uninterrupted_one(small_shards, small_vocab, tmp_path, trimmed):
    """torchrun -m ds_distil, 2 ZeRO-2 ranks: SIGKILL the whole job after its first checkpoint, resume. The trimmed run
    distils with TinyBERT's objective: its projection must come back from the checkpoint as it was."""
    extra = {"student.vocab": str(small_vocab), "loss.objective": "tinybert"} if trimmed else {}
    common = ["--config", SMOKE, *base_overrides(small_shards, **{"train.max_steps": 16, "checkpoint.every_steps": 8,
                                                                   "checkpoint.keep": 5, "train.micro_batch_size": 4, **extra})]
    run(torchrun_distill(tmp_path / "whole", *common))

    out = tmp_path / "killed"
    proc = subprocess.Popen(torchrun_distill(out, *common), env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step00000008" / MARKER).exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    # the launcher and both ranks (torchrun starts its workers in sessions of their own), no chance to clean up
    import psutil

    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)
    proc.wait()
    assert not (out / "student").exists() and latest_tag(out / "checkpoints") == "step00000008"

    refused = run_cli("distill", "--out", str(out), *common, env=ENV)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    changed = run_cli("distill", "--out", str(out), "--resume", *common, "train.lr=0.5", env=ENV)
    assert changed.returncode == 2 and "train.lr" in changed.stderr

    resumed = run(torchrun_distill(out, "--resume", *common))
    assert "resumed from step 8" in resumed.stderr
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "whole" / "student" / "model.safetensors"), load_file(out / "student" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical, dropout on (each rank's RNG state is in the checkpoint)
    assert losses(tmp_path / "whole")[-1] == losses(out)[-1]
    assert validations(tmp_path / "whole") == validations(out) and len(validations(out)) == 1

    # a new run (here 1 rank) starting from the exported student's weights
    # (with lr 1e-10, so that its own export must stay within 1e-8 of the one it started from; lr 0 is refused)
    resized = run_cli("distill", "--out", str(tmp_path / "resized"), *common, f"student.pretrained={out}/student",
                      "train.max_steps=2", "train.lr=1.0e-10", env=ENV)
    assert resized.returncode == 0, resized.stderr[-3000:]
    c = load_file(tmp_path / "resized" / "student" / "model.safetensors")
    for k in b:
        assert torch.allclose(b[k], c[k], rtol=0, atol=1e-8), k


def test_refused_inputs_get_one_line_errors(small_shards, small_vocab, corpus, tmp_path):
    def distill(*overrides):
        proc = run_cli("distill", "--config", SMOKE, "--out", str(tmp_path / "r"), *base_overrides(small_shards), *overrides, env=ENV)
        assert proc.returncode == 2, proc.stderr[-2000:]
        return [l for l in proc.stderr.splitlines() if "error:" in l][-1]

    assert "unknown config key 'train.lrr' (did you mean 'train.lr'?)" in distill("train.lrr=0.1")
    # sizes and probabilities bounded before any work: an impossible micro batch is refused naming the figure
    line = distill("train.micro_batch_size=99999999999999999999")
    assert "train.micro_batch_size=99,999,999,999,999,999,999 needs at least" in line and "GiB free; lower train.micro_batch_size" in line
    assert "dropout must be in [0, 1), got 1.5" in distill("student.dropout=1.5")
    assert "hidden_size must be >= 1, got -64" in distill("student.hidden_size=-64")
    assert "cannot load teacher" in distill("teacher.preset=null", f"teacher.pretrained={tmp_path}/no-such-teacher")
    # a teacher with its own, different vocabulary
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertTokenizer

    tdir = tmp_path / "other-teacher"
    tdir.mkdir()
    (tdir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "isa", "dalawa"]) + "\n")
    BertTokenizer.from_pretrained(str(tdir)).save_pretrained(str(tdir))
    BertForMaskedLM(BertConfig(vocab_size=7, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).save_pretrained(str(tdir))
    line = distill("teacher.preset=null", f"teacher.pretrained={tdir}")
    assert "the teacher" in line and "vocab 7" in line and "re-run `ds-distil prepare`" in line
    # a teacher whose outputs are NaN: the run stops after train.max_nonfinite_steps instead of training on
    nan_dir = tmp_path / "nan-teacher"
    nan_teacher = BertForMaskedLM(BertConfig(vocab_size=119547, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=16))
    with torch.no_grad():
        nan_teacher.bert.embeddings.LayerNorm.weight.fill_(float("nan"))
    nan_teacher.save_pretrained(str(nan_dir))
    AutoTokenizer.from_pretrained(str(small_shards / "tokenizer")).save_pretrained(str(nan_dir))  # the shards' vocabulary
    line = distill("teacher.preset=null", f"teacher.pretrained={nan_dir}", "train.max_nonfinite_steps=3")
    assert "loss was NaN/inf for 3 optimizer steps in a row at step 3" in line
    # issue 25: a run shorter than max_nonfinite_steps whose every step failed used to end "student exported", exit 0
    line = distill("teacher.preset=null", f"teacher.pretrained={nan_dir}", "train.max_steps=3", "train.max_nonfinite_steps=10")
    assert "loss was NaN/inf for 3 optimizer steps in a row at step 3" in line
    assert not (tmp_path / "r" / "student").exists() and not list((tmp_path / "r").glob("checkpoints/step*"))
    # a student trimmed to a target-language vocabulary, with full-vocabulary shards and no student.vocab
    from ds_distil.model.trim import trim_model

    full_dir, trimmed_dir = tmp_path / "full-student", tmp_path / "trimmed-student"
    BertForMaskedLM(BertConfig(vocab_size=119547, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=16)).save_pretrained(str(full_dir))
    AutoTokenizer.from_pretrained(str(small_shards / "tokenizer")).save_pretrained(str(full_dir))
    trim_model(str(full_dir), str(small_vocab), str(trimmed_dir))
    line = distill("student.preset=null", f"student.pretrained={trimmed_dir}")
    assert "needs student.vocab=VOCAB_DIR" in line
    # a vocabulary counted on other shards
    other = tmp_path / "other-shards"
    run_cli("prepare", "--input", str(corpus), "--tokenizer",
            str(small_shards / "tokenizer"), "--out", str(other), "--max-docs", "200", env=ENV)
    proc = run_cli("distill", "--config", SMOKE, "--out", str(tmp_path / "r2"), *base_overrides(other), f"student.vocab={small_vocab}",
                   env=ENV)
    assert proc.returncode == 2 and "was counted on other training shards" in proc.stderr, proc.stderr[-2000:]
    bad_json = tmp_path / "ds.json"
    bad_json.write_text('{"train_micro_batch_size_per_gpu": 4}')
    assert "one source of truth" in distill(f"deepspeed.config={bad_json}")


def test_an_interrupted_checkpoint_is_never_latest(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for step, complete in ((10, True), (20, True), (30, False)):
        d = ckpt / f"step{step:08d}"
        d.mkdir(parents=True)
        (d / "mp_rank_00_model_states.pt").write_bytes(b"x")
        if complete:
            (d / MARKER).write_text("{}")
    assert latest_tag(ckpt) == "step00000020"


def test_sigusr1_checkpoints_stops_for_requeue_and_resume_equals_uninterrupted(small_shards, tmp_path):
    """Preemption: SIGUSR1 -> finish the step, write a complete checkpoint, exit 75; --resume continues exactly.
    More signals (USR1 and TERM, every 5 ms until the process exits, so also while the checkpoint is
    being written) change nothing: one checkpoint, whole, and the one before it untouched."""
    common = ["--config", SMOKE, *base_overrides(small_shards, **{"train.max_steps": 14, "checkpoint.every_steps": 3,
                                                                   "checkpoint.keep": 5, "log.every_steps": 1, "log.eval_every_steps": 5})]
    run([sys.executable, "-m", "ds_distil", "distill", "--out", str(tmp_path / "whole"), *common])

    out = tmp_path / "preempted"
    proc = subprocess.Popen([sys.executable, "-m", "ds_distil", "distill", "--out", str(out), *common], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 4):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be signalled"
        time.sleep(0.02)
    before = {d.name: {f.name: f.read_bytes() for f in d.rglob("*") if f.is_file()}
              for d in (out / "checkpoints").glob("step*") if (d / MARKER).exists()}
    proc.send_signal(signal.SIGUSR1)
    sent, deadline = 1, time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
        proc.send_signal(signal.SIGTERM if sent % 2 else signal.SIGUSR1)
        sent += 1
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr[-3000:]
    tag = latest_tag(out / "checkpoints")
    assert tag is not None and 4 <= int(tag.removeprefix("step")) < 14, tag
    assert sent > 20 and stderr.count("will checkpoint after the current step and stop") == 1, (sent, stderr[-3000:])
    assert "again: already stopping" in stderr and not (out / "student").exists()
    assert before, "no earlier checkpoint to protect"
    for name, files in before.items():  # earlier checkpoints: byte for byte as they were
        assert (out / "checkpoints" / name / MARKER).exists()
        assert {f.name: f.read_bytes() for f in (out / "checkpoints" / name).rglob("*") if f.is_file()} == files, name

    resumed = run([sys.executable, "-m", "ds_distil", "distill", "--out", str(out), "--resume", *common])
    assert f"resumed from step {int(tag.removeprefix('step'))}" in resumed.stderr
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "whole" / "student" / "model.safetensors"), load_file(out / "student" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert losses(tmp_path / "whole") == losses(out)  # metrics.jsonl continues without duplicated steps
    assert [v["step"] for v in validations(out)] == [5, 10, 14] and validations(tmp_path / "whole") == validations(out)


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def test_sigterm_ends_a_run_whose_data_loader_is_stuck(small_shards, tmp_path):
    """Issue 25: a run waiting for a batch that never comes (its data-loader worker stopped, as one stuck in a hung file
    system read) used to log "will checkpoint after the current step and stop" on SIGTERM and wait forever. Now it
    waits the grace period (10 s), kills its workers and exits 75 without a checkpoint of a step it did not take; the
    checkpoint it names is the one --resume continues from, complete."""
    out = tmp_path / "stuck"
    common = ["--config", SMOKE, *base_overrides(small_shards, **{"train.max_steps": 100000, "checkpoint.every_steps": 2,
                                                                   "log.every_steps": 1, "log.eval_every_steps": 0})]
    proc = subprocess.Popen([sys.executable, "-m", "ds_distil", "distill", "--out", str(out), *common], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stopped: list[int] = []
    try:
        deadline = time.time() + 300
        while latest_tag(out / "checkpoints") is None:
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be signalled"
            time.sleep(0.05)
        stopped = _children(proc.pid)  # the data-loader worker
        assert stopped, "no data-loader worker to stop"
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        steps, still = -1, 0  # wait until the batches it had fetched are trained on and the run waits
        while still < 30:
            now = len(losses(out))
            still, steps = (still + 1 if now == steps else 0), now
            assert proc.poll() is None
            time.sleep(0.1)
        start = time.time()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        took = time.time() - start
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, stderr[-3000:]
    tag = latest_tag(out / "checkpoints")
    assert "received SIGTERM: will checkpoint after the current step and stop" in stderr, stderr[-3000:]
    assert "waiting for input: stopping once it comes, or in 10 s without it" in stderr, stderr[-3000:]
    assert (f"no input came within 10 s of the stop request: stopping at step {steps} without a checkpoint; --resume "
            f"continues from {tag}") in stderr, stderr[-3000:]
    assert 10 <= took < 60, took
    assert all(not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text() for pid in stopped)
    assert int(tag.removeprefix("step")) <= steps and (out / "checkpoints" / tag / MARKER).exists()
    assert "Traceback" not in stderr and not (out / "student").exists()


def test_compiled_step_computes_what_the_eager_step_does(small_shards, tmp_path):
    """perf.compile (on by default on GPUs, off on CPU): teacher, student and loss under torch.compile
    give the eager run's losses and weights, up to float rounding."""
    common = ["--config", SMOKE, *base_overrides(small_shards, **{"train.max_steps": 3, "log.every_steps": 1, "student.dropout": 0.0,
                                                                   "checkpoint.every_steps": 0})]
    run([sys.executable, "-m", "ds_distil", "distill", "--out", str(tmp_path / "eager"), *common, "perf.compile=false"])
    compiled = run([sys.executable, "-m", "ds_distil", "distill", "--out", str(tmp_path / "compiled"), *common, "perf.compile=true"])
    assert "torch.compile on" in compiled.stderr
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-5)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "eager" / "student" / "model.safetensors"), load_file(tmp_path / "compiled" / "student" / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
