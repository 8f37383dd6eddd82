"""What task.max_length cuts (finetune/lengths.py), on a constructed set whose token counts are known, and
task.max_length=auto."""

from __future__ import annotations

import pytest

from ds_distil.data.examples import Example, Task
from ds_distil.finetune import lengths


@pytest.fixture(scope="module")
def tok(mbert_tokenizer_dir):
    from ds_distil.data.tokenizer import load_tokenizer

    return load_tokenizer(str(mbert_tokenizer_dir))


def test_truncated_examples_and_tokens_per_split(tok):
    assert tok.tokenize("ang ang") == ["ang", "ang"]  # one token a word: n words are n + 2 tokens with [CLS] and [SEP]
    words = lambda n: " ".join(["ang"] * n)  # noqa: E731
    train = [Example(words(n), lab) for n, lab in ((5, "a"), (10, "b"), (20, "a"), (40, "b"))]  # 7, 12, 22, 42 tokens
    test = [Example(words(3), "a"), Example(words(14), "b")]  # 5, 16 tokens: 16 fits exactly
    task = Task("csv", "sequence", "accuracy", {"train": train, "valid": train[:2], "test": test})
    full = {s: lengths.token_lengths(task, s, tok) for s in task.splits}
    assert full == {"train": [7, 12, 22, 42], "valid": [7, 12], "test": [5, 16]}
    rep = lengths.report(full, 16, 16, 512)
    t = rep["splits"]["train"]
    assert (t["truncated"], t["truncated_share"], t["tokens"], t["tokens_cut"]) == (2, 0.5, 83, 6 + 26)
    assert t["tokens_cut_share"] == pytest.approx(32 / 83) and t["longest"] == 42
    assert rep["splits"]["test"]["truncated"] == 0 and rep["splits"]["valid"]["truncated"] == 0
    warned = lengths.warnings(rep)
    assert len(warned) == 1 and warned[0].startswith("task.max_length=16 cuts 50.0% of the train examples (38.6% of its tokens): ")
    assert "set task.max_length=48 or task.max_length=auto" in warned[0]  # 42 tokens, rounded up to a multiple of 8
    assert "train 2 examples (50.0%), 32 tokens (38.6%) cut | valid 0 examples (0.0%)" in lengths.lines(rep)[0]
    assert lengths.warnings(lengths.report(full, 48, 48, 512)) == []
    # pairs: both texts and three special tokens; the tokenizer's own truncation ends at max_length
    pairs = Task("nli", "pair", "accuracy", {s: [Example(words(10), "a", words(6)), Example(words(2), "b", words(2))]
                                             for s in ("train", "valid", "test")})
    assert lengths.token_lengths(pairs, "test", tok) == [19, 7]
    from ds_distil.finetune.features import featurise

    assert [len(f["input_ids"]) for f in featurise(pairs, "test", tok, 12)] == [12, 7]  # 19 - 12 = 7 tokens cut, as counted
    assert lengths.truncation([19, 7], 12)["tokens_cut"] == 7


def test_auto_length_covers_the_percentile_within_the_cap():
    assert lengths.auto_length([10] * 99 + [500], 512) == 16  # one outlier does not set it; at least 16
    assert lengths.auto_length(list(range(1, 101)), 512) == 104  # 99 covers 99%: rounded up to a multiple of 8
    assert lengths.auto_length([1000] * 50, 512) == 256  # at most AUTO_CAP
    assert lengths.auto_length([1000] * 50, 64) == 64  # and the model's positions
    rep = lengths.report({"train": [30] * 10, "valid": [30], "test": [40]}, 32, "auto", 512)
    assert rep["auto"] == {"percentile": 99.0, "cap": 256, "of": "train", "covering": 30} and rep["setting"] == "auto"
    assert "(auto: covers 99% of the training examples, at most 256)" in lengths.lines(rep)[0]


def test_max_length_setting_takes_auto_or_a_number():
    from ds_distil.core.config import ConfigError, load
    from ds_distil.schema.finetune import FinetuneConfig

    assert load(FinetuneConfig, [], ["task.max_length=auto"]).task.max_length == "auto"
    assert load(FinetuneConfig, [], ["task.max_length=64"]).task.max_length == 64
    with pytest.raises(ConfigError, match="task.max_length"):
        load(FinetuneConfig, [], ["task.max_length=longest"])
