"""Held-out validation (ds_distil/distill/evaluate.py): fixed masks, the right figures, 1 rank = 2 ranks, no side effects."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, free_port, run_prepare

from ds_distil.data.masking import IGNORE_INDEX

HELPER = ROOT / "tests" / "helpers" / "validate_ranks.py"
_spec = importlib.util.spec_from_file_location("validate_ranks", HELPER)
validate_ranks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(validate_ranks)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}


def masked_samples(validator) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """index -> (input_ids, labels, attention_mask) of every real sample this validator's rank evaluates."""
    out = {}
    for b in validator.batches():
        assert b["input_ids"].shape[0] == validator.batch_size  # the last batch padded: the training shapes
        for row, index in enumerate(b["index"].tolist()):
            if index >= 0:
                assert index not in out
                out[index] = (b["input_ids"][row], b["labels"][row], b["attention_mask"][row])
            else:
                assert (b["labels"][row] == IGNORE_INDEX).all() and b["attention_mask"][row].sum() == 0
    return out


def test_the_validation_masks_are_fixed_whatever_the_ranks_and_batch_size(small_shards):
    layouts = {(1, 8): None, (2, 3): None, (3, 5): None}
    for world, batch in layouts:
        seen = {}
        for rank in range(world):
            validator, _ = validate_ranks.build(str(small_shards), batch, rank=rank, world_size=world)
            part = masked_samples(validator)
            assert not seen.keys() & part.keys()  # the ranks' shares are disjoint
            seen.update(part)
        layouts[(world, batch)] = seen
    one = layouts[(1, 8)]
    n = validator.stream.n_samples
    assert sorted(one) == list(range(n)) and n > 50  # every sample of the split, once
    for layout, seen in layouts.items():
        assert seen.keys() == one.keys(), layout
        for index, (ids, labels, att) in one.items():
            assert torch.equal(seen[index][0], ids) and torch.equal(seen[index][1], labels), (layout, index)
            assert torch.equal(seen[index][2], att)
    # and the same at every evaluation (a second pass), with real masking: ~15% of the real tokens, differing by sample
    again = masked_samples(validate_ranks.build(str(small_shards), 8)[0])
    assert all(torch.equal(again[i][1], one[i][1]) for i in one)
    masked = sum(int((labels != IGNORE_INDEX).sum()) for _, labels, _ in one.values())
    real = sum(int(att.sum()) for _, _, att in one.values())
    assert 0.13 < masked / real < 0.16
    assert not torch.equal(one[0][1] != IGNORE_INDEX, one[1][1] != IGNORE_INDEX)
    # eval_max_samples: the first N samples of the split, whatever the layout
    first = {}
    for rank in range(2):
        first.update(masked_samples(validate_ranks.build(str(small_shards), 3, max_samples=10, rank=rank, world_size=2)[0]))
    assert sorted(first) == list(range(10)) and all(torch.equal(first[i][1], one[i][1]) for i in first)


def reference(validator, student, temperature) -> dict[str, float]:
    """The figures from full-vocabulary logits of the Hugging Face models over every position."""
    mlm = kl = correct = agree = masked = 0.0
    teacher_lm = getattr(validator.teacher, "lm", None)
    for b in validator.batches():
        ids, att, labels = b["input_ids"], b["attention_mask"], b["labels"]
        s_ids, s_labels = ids, labels
        if validator.translation is not None:
            s_ids = validator.translation.id_map[ids]
            s_labels = torch.where(labels >= 0, validator.translation.target_map[labels.clamp(min=0)], IGNORE_INDEX)
        with torch.no_grad():
            s = student.model(input_ids=s_ids, attention_mask=att).logits[..., : student.vocab]
        where = s_labels != IGNORE_INDEX
        s_m, y = s[where], s_labels[where]
        mlm += F.cross_entropy(s_m, y, reduction="sum").item()
        correct += (s_m.argmax(-1) == y).sum().item()
        masked += where.sum().item()
        if teacher_lm is not None:
            with torch.no_grad():
                t = teacher_lm.model(input_ids=ids, attention_mask=att).logits[..., : teacher_lm.vocab][where]
            kl += F.kl_div(F.log_softmax(s_m / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                           reduction="sum").item()
            agree += (s_m.argmax(-1) == t.argmax(-1)).sum().item()
    out = {"val/mlm_loss": mlm / masked, "val/mlm_accuracy": correct / masked}
    if teacher_lm is not None:
        out.update({"val/kl": kl / masked, "val/top1_agreement": agree / masked})
    return out


@pytest.mark.parametrize("kind", ["distill", "trimmed", "mlm-only"])
def test_validation_figures_equal_a_full_logits_reference_and_leave_no_trace(small_shards, small_vocab, kind):
    validator, student = validate_ranks.build(str(small_shards), 6, max_samples=30, vocab=str(small_vocab) if kind == "trimmed" else None,
                                              teacher=kind != "mlm-only")
    student.train()
    rng = torch.get_rng_state()
    got = validator(student)
    assert torch.equal(torch.get_rng_state(), rng)  # no draw from the global RNG: training continues exactly
    assert student.training and all(p.grad is None for p in student.parameters())
    student.eval()  # the reference without dropout, as the validator runs
    ref = reference(validator, student, 2.0)
    assert got.keys() >= ref.keys()
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert got["val/perplexity"] == pytest.approx(math.exp(got["val/mlm_loss"]), rel=1e-9)
    assert got["val/samples"] == 30 and got["val/masked_tokens"] > 400
    if kind == "mlm-only":
        assert "val/kl" not in got and "val/top1_agreement" not in got
    else:
        assert got["val/kl"] > 0 and 0 <= got["val/top1_agreement"] <= 1
    # the figures do not depend on the batch size
    assert validate_ranks.build(str(small_shards), 4, max_samples=30, vocab=str(small_vocab) if kind == "trimmed" else None,
                                teacher=kind != "mlm-only")[0](student)["val/mlm_loss"] == pytest.approx(got["val/mlm_loss"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("trimmed", [False, True], ids=["full-vocab", "trimmed-vocab"])
def test_two_ranks_give_the_figures_of_one_rank(small_shards, small_vocab, tmp_path, trimmed):
    """Real processes (torchrun, gloo): 2 ranks with micro batch 3 against 1 rank with micro batch 8."""
    extra = ["--vocab", str(small_vocab)] if trimmed else []
    results = {}
    for nproc, batch in ((2, 3), (1, 8)):
        out = tmp_path / f"{nproc}.json"
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", free_port(),
                               str(HELPER), "--shards", str(small_shards), "--out", str(out), "--batch-size", str(batch),
                               "--max-samples", "45", *extra], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[nproc] = json.loads(out.read_text())
    two, one = results[2], results[1]
    assert [len(x) for x in two["indices"]] == [23, 22] and sorted(sum(two["indices"], [])) == list(range(45))
    for key, value in one["metrics"].items():
        if key != "val/seconds":
            assert two["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_shards_without_a_validation_split_are_said_once_and_skipped(tmp_path, corpus, mbert_tokenizer_dir, caplog):
    from ds_distil.data.manifest import load_manifest
    from ds_distil.distill import evaluate
    from ds_distil.distill.objectives.mlm import MLM
    from ds_distil.schema.distill import DataConfig

    run_prepare(tmp_path / "s", [corpus], mbert_tokenizer_dir, max_docs=30, val_fraction=0.0)
    manifest = load_manifest(tmp_path / "s")
    with caplog.at_level("WARNING"):
        assert evaluate.build(manifest, DataConfig(shards=str(tmp_path / "s")), 0, 4, torch.device("cpu"), MLM(), 0, 1) is None
        assert evaluate.build(manifest, DataConfig(shards=str(tmp_path / "s")), 0, 4, torch.device("cpu"), MLM(), 1, 2) is None
    assert [r.message for r in caplog.records].count(
        f"{tmp_path / 's'} has no validation split (prepared with val_fraction 0): no validation metrics in this run; "
        "prepare with --val-fraction 0.01 to have them") == 1
