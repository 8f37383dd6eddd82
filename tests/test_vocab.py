"""Target-language vocabulary: choosing it, its tokenizer, the loss over it, trimming models, bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli, run_prepare

from ds_distil.core.errors import UserError
from ds_distil.data.vocab import build_vocab, load_vocab_map
from ds_distil.schema.distill import LossConfig
from ds_distil.schema.vocab import VocabConfig


@pytest.fixture(scope="module")
def docs_shards(tmp_path_factory, corpus_docs, mbert_tokenizer_dir):
    """400 real documents, every one of them in the training split (no validation split, no shuffle)."""
    d = tmp_path_factory.mktemp("vdocs")
    (d / "docs.txt").write_text("\n".join(corpus_docs[:400]) + "\n", encoding="utf-8")
    run_prepare(d / "shards", [d / "docs.txt"], mbert_tokenizer_dir, val_fraction=0.0, doc_shuffle_buffer=0)
    return d / "shards", corpus_docs[:400]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory, docs_shards):
    out = tmp_path_factory.mktemp("v") / "vocab"
    build_vocab(VocabConfig(shards=str(docs_shards[0]), out=str(out), report_data="none"))
    return out


def test_every_seen_token_kept_tokenizes_the_training_text_identically(docs_shards, vocab_dir):
    from ds_distil.data.tokenizer import load_tokenizer

    shards, docs = docs_shards
    full, trimmed = load_tokenizer(str(shards / "tokenizer")), load_tokenizer(str(vocab_dir))
    vmap = load_vocab_map(vocab_dir)
    old_to_new = vmap.old_to_new(-1)
    for doc in docs:
        a = torch.tensor(full(doc)["input_ids"])
        b = torch.tensor(trimmed(doc)["input_ids"])
        assert (old_to_new[a] >= 0).all() and torch.equal(old_to_new[a], b), doc[:80]
    # the kept set: specials, every single character with its ## form, and the corpus tokens
    report = json.loads((vocab_dir / "vocab_report.json").read_text())
    assert report["train_coverage"] == 1.0 and report["breakdown"]["special"] == 5
    assert report["kept"] == len(trimmed) == vmap.size < len(full)
    assert trimmed.mask_token_id == int(old_to_new[full.mask_token_id]) and trimmed.pad_token_id == 0
    assert trimmed.backend_tokenizer.normalizer.__getstate__() == full.backend_tokenizer.normalizer.__getstate__()


def test_text_made_of_kept_characters_never_becomes_unk(vocab_dir):
    from ds_distil.data.tokenizer import load_tokenizer

    trimmed = load_tokenizer(str(vocab_dir))
    chars = sorted(t for t in trimmed.get_vocab() if len(t) == 1 and not t.isspace())
    assert len(chars) > 5000  # single_chars=all: every character of the original vocabulary, not only Tagalog's
    rng = random.Random(0)
    text = " ".join("".join(rng.choice(chars) for _ in range(rng.randint(1, 12))) for _ in range(3000))
    ids = trimmed(text, add_special_tokens=False)["input_ids"]
    assert trimmed.unk_token_id not in ids and len(ids) > 3000


@pytest.mark.parametrize("rule, check", [
    ({"coverage": 0.9}, lambda r: 0.9 <= r["train_coverage"] < 0.93),
    ({"max_size": 21000}, lambda r: r["kept"] == 21000),
    ({"min_count": 5, "single_chars": "seen"}, lambda r: r["breakdown"]["single_chars"] < 1000 and r["train_coverage"] < 1.0),
])
def test_the_other_rules(docs_shards, tmp_path, rule, check):
    r = build_vocab(VocabConfig(shards=str(docs_shards[0]), out=str(tmp_path / "v"), report_data="none", **rule))
    assert check(r), r


def test_kl_over_the_kept_vocabulary_equals_the_restricted_renormalised_full_reference():
    """The teacher's head sliced to the kept rows (and padded), the student over the kept vocabulary:
    the same loss and gradients as full-vocabulary teacher logits restricted to the kept columns and
    renormalised there (the student's logits are over the kept tokens anyway)."""
    from conftest import objective_losses
    from transformers import BertForMaskedLM

    from ds_distil.data.masking import static_positions
    from ds_distil.model.build import bert_config
    from ds_distil.model.forward import MaskedLM
    from ds_distil.model.surgery import restrict_head

    vocab, kept = 500, torch.tensor(sorted(random.Random(1).sample(range(5, 500), 120) + [0, 1, 2, 3, 4]))
    old_to_new = torch.full((vocab,), -1, dtype=torch.long)
    old_to_new[kept] = torch.arange(len(kept))
    torch.manual_seed(0)
    teacher = BertForMaskedLM(bert_config("micro", vocab, 0, dropout=0.0)).eval()
    student = BertForMaskedLM(bert_config(None, len(kept), 0, dropout=0.0, num_layers=1, hidden_size=32, intermediate_size=64,
                                          num_heads=2, max_positions=64))
    g = torch.Generator().manual_seed(2)
    ids = kept[torch.randint(5, len(kept), (4, 20), generator=g)]  # text of kept tokens, in original ids
    attention = torch.ones_like(ids)
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.2, ids, -100)
    masked = ids.masked_fill(labels != -100, 4)
    cfg = LossConfig(a_kl=0.6, a_mlm=0.4, temperature=2.0)

    with torch.no_grad():
        t_full = teacher(input_ids=masked, attention_mask=attention).logits  # before the head is restricted
    positions, targets = static_positions(labels, 10)
    n = int((labels != -100).sum())
    restrict_head(teacher, kept, pad_multiple=128)
    with torch.no_grad():
        t_logits = MaskedLM(teacher, len(kept))(masked, attention, positions).logits
    student_ids = old_to_new[masked]
    s_logits = MaskedLM(student, len(kept))(student_ids, attention, positions).logits
    new_targets = torch.where(targets >= 0, old_to_new[targets.clamp(min=0)], -100)
    ours = objective_losses(cfg, s_logits, new_targets, n, t_logits)
    ours["total"].backward()
    grads = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()

    sel = labels != -100
    s_ref = student(input_ids=student_ids, attention_mask=attention).logits[sel]
    t_ref = t_full[sel][:, kept]  # restricted; log_softmax renormalises over the kept tokens
    kl = F.kl_div(F.log_softmax(s_ref / 2.0, -1), F.log_softmax(t_ref / 2.0, -1), log_target=True, reduction="batchmean")
    mlm = F.cross_entropy(s_ref, old_to_new[labels[sel]])
    (cfg.a_kl * 4.0 * kl + cfg.a_mlm * mlm).backward()
    assert torch.allclose(ours["kl"], kl, rtol=1e-5, atol=1e-6) and torch.allclose(ours["mlm"], mlm, rtol=1e-5)
    for (name, p), g_ours in zip(student.named_parameters(), grads):
        assert torch.allclose(g_ours, p.grad, rtol=1e-4, atol=1e-7), name


def test_trim_after_the_fact_keeps_the_kept_logits(tmp_path, docs_shards, vocab_dir):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from ds_distil.model.build import bert_config

    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(bert_config("micro", 119547, 0)).save_pretrained(str(model_dir))
    AutoTokenizer.from_pretrained(str(docs_shards[0] / "tokenizer")).save_pretrained(str(model_dir))
    proc = run_cli("trim", "--model", str(model_dir), "--vocab", str(vocab_dir), "--out", str(tmp_path / "trimmed"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    full = AutoModelForMaskedLM.from_pretrained(str(model_dir)).eval()
    trimmed = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "trimmed")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "trimmed"))
    kept = torch.from_numpy(load_vocab_map(vocab_dir).kept)
    assert trimmed.config.vocab_size == len(tok) == len(kept)
    text = "Ang bata ay naglalaro sa labas ng bahay."
    with torch.no_grad():
        a = full(**AutoTokenizer.from_pretrained(str(model_dir))(text, return_tensors="pt")).logits[..., kept]
        b = trimmed(**tok(text, return_tensors="pt")).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert sum(p.numel() for p in trimmed.parameters()) < sum(p.numel() for p in full.parameters()) / 2


def test_bad_vocabularies_are_refused(tmp_path, docs_shards, vocab_dir, small_shards):
    # from other shards (same tokenizer)
    with pytest.raises(UserError, match="counted on other training shards"):
        load_vocab_map(vocab_dir).check_shards(__import__("ds_distil.data.manifest", fromlist=["load_manifest"]).load_manifest(small_shards))
    # a map that drops a special token
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(vocab_dir, broken)
    data = json.loads((broken / "vocab_map.json").read_text())
    data["kept_ids"] = [i for i in data["kept_ids"] if i != 103]
    (broken / "vocab_map.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"drops the special token id\(s\) \[103\]"):
        load_vocab_map(broken)
    # ids out of order or beyond the vocabulary, a field of the wrong type: vocab_map.json's schema
    for field, value, message in (("kept_ids", [5, 3], "kept_ids must be distinct original ids in ascending order below 119547"),
                                  ("kept_ids", [0, 119547], "kept_ids must be distinct original ids in ascending order"),
                                  ("trimmed_vocab_sha256", 7, "trimmed_vocab_sha256: input should be a valid string")):
        (broken / "vocab_map.json").write_text(json.dumps({**data, field: value}))
        with pytest.raises(UserError, match=rf"vocab_map.json: {message}.*make the vocabulary again with `ds-distil vocab`"):
            load_vocab_map(broken)
    # not a vocabulary directory, and a damaged map
    with pytest.raises(UserError, match="not a vocabulary directory"):
        load_vocab_map(tmp_path)
    (broken / "vocab_map.json").write_text("{")
    with pytest.raises(UserError, match="is damaged"):
        load_vocab_map(broken)
    # another tokenizer: shards made with a different vocabulary
    from transformers import BertTokenizer

    other = tmp_path / "other-tok"
    other.mkdir()
    (other / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ang", "bata"]) + "\n")
    BertTokenizer.from_pretrained(str(other)).save_pretrained(str(other))
    fake = type("M", (), {"tokenizer": {"vocab_sha256": "0" * 64, "vocab_size": 7}, "directory": other})()
    with pytest.raises(UserError, match="was chosen for tokenizer sha256"):
        load_vocab_map(vocab_dir).check_shards(fake)
    # an existing output without --overwrite
    proc = run_cli("vocab", "--shards", str(docs_shards[0]), "--out", str(vocab_dir))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr


def test_vocab_command_reports_coverage_and_downstream_sets(docs_shards, tmp_path, data_dir):
    proc = run_cli("vocab", "--shards", str(docs_shards[0]), "--out", str(tmp_path / "v"), "--max-size", "21500")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kept 21,500 of 119,547 tokens" in proc.stdout and "hatespeech/train" in proc.stdout
    report = json.loads((tmp_path / "v" / "vocab_report.json").read_text())
    st = report["sets"]["hatespeech/train"]
    assert st["trimmed_tokens_per_word"] >= st["full_tokens_per_word"] and 0 < st["full_tokens_not_kept"] < 1
    assert np.isclose(report["kept_fraction"], 21500 / 119547)
