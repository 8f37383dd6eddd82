"""The baselines beside every finetuning result: majority class and a bag-of-words linear model,
chosen on the validation split, for sentence, pair and token tasks."""

from __future__ import annotations

import random

import pytest

from ds_distil.data.examples import Example, Task
from ds_distil.finetune.baselines import run_baselines


def feats_for(task: Task) -> dict[str, list[dict]]:
    label_id = {lab: i for i, lab in enumerate(task.labels)}
    out = {}
    for split, examples in task.splits.items():
        if task.kind == "token":  # one sub-word per word plus [CLS]/[SEP], as featurise would give
            out[split] = [{"index": i, "labels": [-100] + [label_id[t] for t in e.label] + [-100]} for i, e in enumerate(examples)]
        else:
            out[split] = [{"index": i, "labels": label_id[e.label]} for i, e in enumerate(examples)]
    return out


def sentence_task(n: int = 300, seed: int = 0) -> Task:
    """The label follows one cue word ('galit' = hate) among shared filler; 'hate' is the minority."""
    rng = random.Random(seed)
    filler = "ang mga tao sa bayan ay nagsabi na ito ay totoo".split()

    def ex():
        hate = rng.random() < 0.4
        words = rng.sample(filler, 6) + (["galit", "talaga"] if hate else ["masaya", "talaga"])
        rng.shuffle(words)
        return Example(" ".join(words), "hate" if hate else "ok")

    return Task("csv", "sequence", "accuracy", {s: [ex() for _ in range(n)] for s in ("train", "valid", "test")})


def test_bag_of_words_learns_a_cue_word_that_the_majority_class_cannot():
    task = sentence_task()
    base = run_baselines(task, feats_for(task))
    assert set(base) == {"majority", "bow"}
    assert base["majority"]["test"]["score"] == pytest.approx(sum(e.label == "ok" for e in task.splits["test"]) / 300)
    bow = base["bow"]
    assert bow["test"]["score"] == 1.0 and bow["valid"]["score"] == 1.0
    assert bow["model"] in bow["candidates_valid"] and bow["candidates_valid"][bow["model"]] == max(bow["candidates_valid"].values())
    assert "unigrams + bigrams" in bow["description"] and "chosen on the validation split" in bow["description"]
    assert run_baselines(task, feats_for(task))["bow"] == bow  # deterministic: the same row for every seed of a model


def test_bag_of_words_on_pairs_uses_what_premise_and_hypothesis_share():
    """Entailment = the hypothesis repeats a premise word; no single word tells the label."""
    rng = random.Random(1)
    vocab = [f"salita{i}" for i in range(40)]

    def ex():
        premise = rng.sample(vocab, 5)
        same = rng.random() < 0.5
        hyp = [rng.choice(premise)] if same else [rng.choice([w for w in vocab if w not in premise])]
        return Example(" ".join(premise), "entailment" if same else "contradiction", text_pair=" ".join(hyp + ["ay", "totoo"]))

    task = Task("nli", "pair", "accuracy", {s: [ex() for _ in range(400)] for s in ("train", "valid", "test")})
    bow = run_baselines(task, feats_for(task))["bow"]
    assert bow["test"]["score"] > 0.9, bow
    assert "shared words" in bow["description"]


def test_token_baseline_tags_each_word_from_the_word_and_its_neighbours():
    """POS-like: 'ng' is ADP; a word after 'ang' is NOUN, else VERB: the neighbour decides for the same word."""
    rng = random.Random(2)
    words = ["bahay", "kain", "takbo", "aso"]

    def sentence():
        toks, tags = [], []
        for _ in range(6):
            w = rng.choice(words)
            if rng.random() < 0.5:
                toks += ["ang", w]
                tags += ["DET", "NOUN"]
            else:
                toks += ["ng", w]
                tags += ["ADP", "VERB"]
        return Example(toks, tags)

    task = Task("pos", "token", "accuracy", {s: [sentence() for _ in range(60)] for s in ("train", "valid", "test")})
    base = run_baselines(task, feats_for(task))
    assert base["bow"]["test"]["score"] == 1.0 and base["majority"]["test"]["score"] < 0.4
    assert "neighbours" in base["bow"]["description"]


def test_truncated_words_are_not_scored_and_predictions_line_up(tmp_path):
    """featurise drops words past max_length: their labels are absent, and the k-th scored position is word k."""
    task = Task("pos", "token", "accuracy", {s: [Example(["ang", "aso", "ng", "bahay"], ["DET", "NOUN", "ADP", "NOUN"])] * 5
                                             for s in ("train", "valid", "test")})
    feats = feats_for(task)
    for split in ("valid", "test"):  # keep only the first two words, as a short max_length would
        feats[split] = [{"index": f["index"], "labels": f["labels"][:3] + [-100]} for f in feats[split]]
    bow = run_baselines(task, feats)["bow"]
    assert bow["test"]["score"] == 1.0
