"""`ds-distil predict`'s input and output without a model run: files read as finetuning reads them, refused in one line
when they do not fit the model (data/inputs.py), and the prediction lines of token tasks, one per word, a word cut by
max_length null (finetune/inference.py)."""

from __future__ import annotations

import json

import pytest
import torch

from ds_distil.core.errors import UserError
from ds_distil.data.examples import Example
from ds_distil.data.inputs import ModelInput, read_input
from ds_distil.finetune.features import encode
from ds_distil.finetune.inference import records

POS = ModelInput("token", ("ADP", "NOUN", "VERB"), "tokens", None, "tags")


def test_token_files_are_read_with_or_without_tags_and_refused_when_they_are_another_models(tmp_path):
    words = tmp_path / "words.jsonl"
    words.write_text('{"tokens": ["Kumain", "ng", "isda"]}\n{"tokens": "Tumakbo siya"}\n', encoding="utf-8")
    examples, record = read_input(words, POS)
    assert [e.text for e in examples] == [["Kumain", "ng", "isda"], ["Tumakbo", "siya"]] and all(e.label is None for e in examples)
    assert [e.id for e in examples] == ["words.jsonl:1", "words.jsonl:2"] and record["labelled"] is False

    conllu = tmp_path / "gold.conllu"
    rows = [("Kumain", "VERB"), ("ng", "ADP"), ("isda", "NOUN")]
    conllu.write_text("# text = x\n" + "".join(f"{i}\t{w}\t_\t{t}\t_\t_\t_\t_\t_\t_\n" for i, (w, t) in enumerate(rows, 1)) + "\n",
                      encoding="utf-8")
    examples, record = read_input(conllu, POS)
    assert examples[0].label == ["VERB", "ADP", "NOUN"] and examples[0].id == "gold.conllu:2" and record["labelled"] is True

    ner = tmp_path / "ner.iob2"
    ner.write_text("Si\tO\nJuan\tB-PER\n\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"ner.iob2:1: tag 'B-PER' is not one of the model's labels \(ADP, NOUN, VERB\); the file is "
                                        r"not for this model"):
        read_input(ner, POS)
    table = tmp_path / "x.csv"
    table.write_text("text,label\na,b\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"a token classification model reads .conllu, IOB2"):
        read_input(table, POS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tokens": ["a", "b"], "tags": ["NOUN"]}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl:1: 'tags' is not a list of 2 tags, one per word"):
        read_input(bad, POS)


def test_a_sequence_model_refuses_a_token_file_and_a_missing_column(tmp_path):
    seq = ModelInput("pair", ("entailment", "contradiction"), "premise", "hypothesis", "label")
    f = tmp_path / "pairs.csv"
    f.write_text("premise,label\nisa,entailment\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"pairs.csv has no column 'hypothesis' .*; set text_pair_column=NAME"):
        read_input(f, seq)
    conllu = tmp_path / "x.conllu"
    conllu.write_text("1\ta\t_\tNOUN\t_\t_\t_\t_\t_\t_\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"a pair classification model reads .csv, .tsv, .jsonl, .json files"):
        read_input(conllu, seq)


def test_token_predictions_are_per_word_and_words_cut_by_max_length_are_null(mbert_tokenizer_dir):
    from ds_distil.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(mbert_tokenizer_dir))
    labels = list(POS.labels)
    examples = [Example(["Kumain", "ng", "isda"], ["VERB", "ADP", "NOUN"], id="a:1"),
                Example(["Tumakbo"] * 12, None, id="a:5")]  # longer than max_length 10: cut
    feats = encode("token", labels, examples, tok, max_length=10)
    assert feats[0]["truncated"] is False and feats[1]["truncated"] is True and len(feats[1]["words"]) < 12
    logits = {}
    for f in feats:  # real tokens x labels: a word's first sub-word says VERB, its other sub-words NOUN
        z = torch.zeros(len(f["input_ids"]), 3)
        z[:, 1] = 1.0
        z[f["words"], 1], z[f["words"], 2] = 0.0, 2.0
        logits[f["index"]] = z
    lines = [json.loads(json.dumps(r)) for r in records("token", labels, examples, feats, logits)]
    assert lines[0]["words"] == ["Kumain", "ng", "isda"] and lines[0]["gold"] == ["VERB", "ADP", "NOUN"]
    assert lines[0]["predicted"] == ["VERB"] * 3 and lines[0]["truncated"] is False
    p = lines[0]["probabilities"][0]
    assert list(p) == labels and sum(p.values()) == pytest.approx(1.0) and lines[0]["logits"][0] == [0.0, 0.0, 2.0]
    kept = len(feats[1]["words"])
    assert lines[1]["gold"] is None and lines[1]["predicted"] == ["VERB"] * kept + [None] * (12 - kept) and lines[1]["truncated"] is True
    assert lines[1]["probabilities"][kept:] == [None] * (12 - kept) and lines[1]["logits"][-1] is None
