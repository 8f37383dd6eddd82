"""Downstream task readers on the real files, label alignment, seqeval F1, the NLI builder, bad input."""

from __future__ import annotations

import csv

import pytest

from ds_distil.core.errors import UserError
from ds_distil.data.examples import Example, Task
from ds_distil.data.tasks import build_nli, check_iob2, load_task, read_iob2, write_nli


def test_hatespeech_counts_match_the_files(data_dir):
    task = load_task("hatespeech", str(data_dir / "hatespeech"))
    assert {s: len(v) for s, v in task.splits.items()} == {"train": 10000, "valid": 4232, "test": 4232}
    assert task.labels == ["0", "1"] and task.kind == "sequence" and task.metric == "accuracy"


def test_pos_reads_conllu_upos(data_dir):
    task = load_task("pos", str(data_dir / "ud_pos"))
    n = {s: len(v) for s, v in task.splits.items()}
    assert n["test"] == 1563 and n["train"] + n["valid"] == 1561 and n["valid"] == 156
    assert "NOUN" in task.labels and "VERB" in task.labels and "PUNCT" in task.labels
    ex = task.splits["test"][0]
    assert len(ex.text) == len(ex.label) > 0


def test_ner_pools_the_evaluation_files_and_keeps_iob2(data_dir):
    task = load_task("ner", str(data_dir / "uner_ner"))
    assert sum(len(v) for v in task.splits.values()) == 222
    assert task.metric == "f1" and {"B-PER", "B-LOC", "I-LOC", "O"} <= set(task.labels)  # this set has no ORG, no I-PER
    for ex in task.splits["train"]:
        check_iob2(ex.label, "x")


def test_broken_iob2_is_refused_with_the_line(tmp_path):
    f = tmp_path / "bad.iob2"
    f.write_text("1\tSi\tO\n2\tJuan\tI-PER\n\n")
    with pytest.raises(UserError, match=r"bad.iob2:3: broken IOB2 sequence: 'I-PER' at token 2 follows 'O'"):
        read_iob2(f)


def test_missing_split_missing_column_unseen_label(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    (d / "train.csv").write_text("text,label\nisa,a\ndalawa,b\n")
    (d / "test.csv").write_text("text,label\ntatlo,a\n")
    with pytest.raises(UserError, match=r"no validation file in .*valid.\{csv,tsv,jsonl,json\}.*task.valid_fraction=0.1"):
        load_task("csv", str(d))
    (d / "valid.csv").write_text("text,label\napat,c\n")
    with pytest.raises(UserError, match=r"valid.csv:2: label 'c' never occurs in the training data \(train.csv: a, b\)"):
        load_task("csv", str(d))
    (d / "valid.csv").write_text("sentence,label\napat,a\n")
    with pytest.raises(UserError, match="valid.csv has no column 'text'"):
        load_task("csv", str(d))
    with pytest.raises(UserError, match="unknown task 'sentiment'"):
        load_task("sentiment")


def test_csv_task_with_pairs_and_named_columns(tmp_path):
    from ds_distil.data.readers import ReadOptions

    d = tmp_path / "pairs"
    d.mkdir()
    for split in ("train", "dev", "test"):
        (d / f"{split}.csv").write_text("a,b,y\nisa,dalawa,yes\ntatlo,apat,no\n")
    task = load_task("csv", str(d), read=ReadOptions(text_column="a", text_pair_column="b", label_column="y"))
    assert task.kind == "pair" and task.splits["valid"][0] == Example("isa", "yes", "dalawa")
    assert task.dataset == "pairs" and task.provenance["files"]["valid"]["path"].endswith("dev.csv")


def test_nli_builder_is_balanced_deterministic_and_never_repeats_a_pair(data_dir, tmp_path):
    with open(data_dir / "fakenews" / "full.csv", encoding="utf-8") as f:
        articles = [r["article"] for r in csv.DictReader(f)]
    a = build_nli(articles, seed=3)
    assert a == build_nli(articles, seed=3) and a != build_nli(articles, seed=4)
    pairs = [(r["premise"], r["hypothesis"]) for rows in a.values() for r in rows]
    assert len(pairs) == len(set(pairs))
    for rows in a.values():
        labels = [r["label"] for r in rows]
        assert labels.count("entailment") == labels.count("contradiction") > 100
    # no premise (article) in two splits
    premises = {s: {r["premise"] for r in rows} for s, rows in a.items()}
    assert not (premises["train"] & premises["test"]) and not (premises["train"] & premises["valid"])
    write_nli(a, tmp_path / "nli")
    task = load_task("nli", str(tmp_path / "nli"))
    assert task.kind == "pair" and task.labels == ["contradiction", "entailment"]
    assert len(task.splits["train"]) == len(a["train"])


def test_first_subword_label_alignment(mbert_tokenizer_dir):
    from ds_distil.data.tokenizer import load_tokenizer
    from ds_distil.finetune.features import featurise

    tok = load_tokenizer(str(mbert_tokenizer_dir))
    words = ["Pinagsasabihan", "si", "Juan", "ng", "Maynila"]
    tags = ["O", "O", "B-PER", "O", "B-LOC"]
    task = Task("ner", "token", "f1", {s: [Example(words, tags)] for s in ("train", "valid", "test")})
    feat = featurise(task, "train", tok, 64)[0]
    pieces = tok.convert_ids_to_tokens(feat["input_ids"])
    labelled = [(p, task.labels[l]) for p, l in zip(pieces, feat["labels"]) if l != -100]
    assert [p for p, _ in labelled] == [tok.tokenize(w)[0] for w in words]  # one label per word, on its first piece
    assert [t for _, t in labelled] == tags
    assert len(tok.tokenize("Pinagsasabihan")) > 1  # the case that needs alignment


def test_seqeval_entity_f1_on_a_known_example():
    from ds_distil.finetune.scoring import score

    labels = ["B-LOC", "B-PER", "I-PER", "O"]
    ex = [Example(["a", "b", "c", "d"], ["B-PER", "I-PER", "O", "B-LOC"]), Example(["e", "f"], ["B-PER", "O"])]
    task = Task("ner", "token", "f1", {"train": ex, "valid": ex, "test": ex}, labels=labels)
    lid = {l: i for i, l in enumerate(labels)}
    feats = [{"index": i, "labels": [lid[t] for t in e.label]} for i, e in enumerate(ex)]
    # predictions: PER(a b) right, LOC(d) missed, PER(e) right, an extra LOC at f
    preds = {0: [lid["B-PER"], lid["I-PER"], lid["O"], lid["O"]], 1: [lid["B-PER"], lid["B-LOC"]]}
    # gold entities 3, predicted 3, correct 2: precision 2/3, recall 2/3, F1 2/3
    assert score(task, "test", preds, feats) == pytest.approx(2 / 3)
