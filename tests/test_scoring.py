"""Scores beyond accuracy (per class, confusion matrix, macro-F1), the majority baseline from the data,
the one-class warning, progress lines without a terminal, third-party output kept quiet."""

from __future__ import annotations

import json
import logging

import pytest

from ds_distil.data.examples import Example, Task
from ds_distil.finetune.baselines import run_baselines
from ds_distil.finetune.scoring import collapse_warning, evaluate

LABELS = ["hate", "ok"]


def seq_task(test_labels, train_labels=("ok", "ok", "ok", "hate")):
    ex = lambda labs: [Example(f"t{i}", lab) for i, lab in enumerate(labs)]  # noqa: E731
    return Task("csv", "sequence", "accuracy", {"train": ex(train_labels), "valid": ex(test_labels), "test": ex(test_labels)})


def feats_of(labels):
    return [{"index": i, "labels": LABELS.index(lab)} for i, lab in enumerate(labels)]


def test_per_class_scores_confusion_matrix_and_macro_f1():
    gold = ["ok"] * 6 + ["hate"] * 4
    pred = ["ok"] * 5 + ["hate"] + ["hate"] * 2 + ["ok"] * 2
    task = seq_task(gold)
    ev = evaluate(task, {i: LABELS.index(p) for i, p in enumerate(pred)}, feats_of(gold))
    assert ev["score"] == ev["accuracy"] == pytest.approx(0.7)
    assert ev["confusion_matrix"] == [[2, 2], [1, 5]]  # rows: true hate, ok; columns: predicted hate, ok
    hate = ev["per_class"]["hate"]
    assert (hate["precision"], hate["recall"], hate["support"], hate["predicted"]) == (pytest.approx(2 / 3), 0.5, 4, 3)
    f1_hate, f1_ok = 2 * (2 / 3 * 0.5) / (2 / 3 + 0.5), 2 * (5 / 7 * 5 / 6) / (5 / 7 + 5 / 6)
    assert ev["macro_f1"] == pytest.approx((f1_hate + f1_ok) / 2)


def test_one_class_predictor_triggers_the_warning_and_the_majority_baseline_matches_it():
    gold = ["ok"] * 80 + ["hate"] * 20
    task = seq_task(gold)
    always_ok = {i: 1 for i in range(100)}
    ev = evaluate(task, always_ok, feats_of(gold))
    warning = collapse_warning(task, ev)
    assert warning.startswith("the model predicts 'ok' for 100.0% of the test set (100 of 100; 'ok' is 80.0% of the true labels)")
    base = run_baselines(task, {"train": feats_of(["ok", "ok", "ok", "hate"]), "valid": feats_of(gold), "test": feats_of(gold)})
    assert base["majority"]["label"] == "ok"  # the most frequent *training* label
    assert base["majority"]["test"] == {"score": 0.8, "accuracy": 0.8, "macro_f1": pytest.approx(0.5 * 2 * 0.8 / 1.8)}
    # 95 of 100 on one class is not yet a collapse; 96 is
    assert collapse_warning(task, evaluate(task, {i: int(i >= 5) for i in range(100)}, feats_of(gold))) is None
    assert collapse_warning(task, evaluate(task, {i: int(i >= 4) for i in range(100)}, feats_of(gold))) is not None


def test_token_tasks_score_per_word_and_never_warn():
    labels = ["B-PER", "O"]
    ex = [Example(["a", "b", "c"], ["B-PER", "O", "O"])]
    task = Task("ner", "token", "f1", {"train": ex, "valid": ex, "test": ex}, labels=labels)
    feats = [{"index": 0, "labels": [-100, 0, 1, 1, -100]}]
    ev = evaluate(task, {0: [1, 1, 1, 1, 1]}, feats)
    assert ev["score"] == 0.0 and ev["accuracy"] == pytest.approx(2 / 3) and ev["confusion_matrix"] == [[0, 1], [0, 2]]
    assert collapse_warning(task, ev) is None


def test_progress_without_a_terminal_logs_lines_with_eta(caplog):
    from ds_distil.core.progress import Progress

    bar = Progress(10, "finetune", "step", log_every_s=0.0)  # pytest's stderr is not a terminal: no bar
    assert bar.bar is None
    with caplog.at_level(logging.INFO, logger="ds_distil.core.progress"):
        bar.update(4, loss="0.5000")
    assert caplog.messages and caplog.messages[-1].startswith("finetune: 4/10 steps (40%) | loss 0.5000 | ")
    assert "steps/s | ETA " in caplog.messages[-1]
    silent = Progress(10, "finetune", enabled=False, log_every_s=0.0)
    caplog.clear()
    silent.update(5)
    assert not caplog.messages  # other ranks say nothing


def test_the_95_percent_interval_brackets_the_score_and_counts_entities_as_seqeval_does():
    import random

    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    from ds_distil.finetune.scoring import _row_counts, interval

    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC"]
    gold = [[rng.choice(tags[:2] + tags[3:]) for _ in range(6)] for _ in range(80)]
    pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in row] for row in gold]
    ex = [Example(["w"] * 6, g) for g in gold]
    task = Task("ner", "token", "f1", {"train": ex, "valid": ex, "test": ex}, labels=sorted({t for r in gold + pred for t in r}))
    counts = _row_counts(task, gold, pred).sum(0)
    assert 2 * counts[0] / (counts[1] + counts[2]) == pytest.approx(f1_score(gold, pred, mode="strict", scheme=IOB2))
    feats = [{"index": i, "labels": [task.labels.index(t) for t in g]} for i, g in enumerate(gold)]
    preds = {i: [task.labels.index(t) for t in p] for i, p in enumerate(pred)}
    score = evaluate(task, preds, feats)["score"]
    lo, hi = interval(task, preds, feats)
    assert lo < score < hi and hi - lo < 0.3 and interval(task, preds, feats) == [lo, hi]  # seeded


def test_hparams_leave_unset_settings_out(tmp_path):
    """TensorBoard's HParams tab showed max_steps as the string "None" for a run trained by epochs."""
    from ds_distil.runtime.metrics import Metrics

    m = Metrics(tmp_path, True, False, 10, 0)
    m.hparams(10, {"lr": 0.1, "max_steps": None, "epochs": 3.0}, {"hparam/test_score": 0.5})
    m.close()
    record = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "hparams" in line][0]
    assert record["hparams"] == {"lr": 0.1, "epochs": 3.0}


def test_third_party_stdout_is_swallowed_unless_verbose_or_failing(capsys, monkeypatch):
    from ds_distil.core import quiet

    monkeypatch.setattr(quiet, "VERBOSE", False)
    with quiet.third_party_stdout():
        print("DeepSpeed op built successfully")
    assert capsys.readouterr().out == ""
    with pytest.raises(RuntimeError), quiet.third_party_stdout():
        print("compiler said: no space left")
        raise RuntimeError("build failed")
    assert "no space left" in capsys.readouterr().err  # a failure shows what was held back
    monkeypatch.setattr(quiet, "VERBOSE", True)
    with quiet.third_party_stdout():
        print("shown")
    assert capsys.readouterr().out == "shown\n"


def test_model_names_come_from_card_config_or_export_not_the_path(tmp_path):
    import json

    from ds_distil.model.info import display_name

    d = tmp_path / "runs" / "x" / "student"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 4, "hidden_size": 312}))
    assert display_name(str(d)) == "bert 4x312 (student)"
    (d / "ds_distil_export.json").write_text(json.dumps({"checkpoint": str(tmp_path / "runs" / "dbert-tiny-oscar" / "checkpoints" / "step00000100")}))
    assert display_name(str(d)) == "dbert-tiny-oscar (bert 4x312)"
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "_name_or_path": "bert-base-multilingual-cased"}))
    assert display_name(str(d)) == "bert-base-multilingual-cased"
    (d / "README.md").write_text("---\nlicense: mit\nmodel-index:\n- name: dBERT Tiny (Tagalog)\n---\n# Card\n")
    assert display_name(str(d)) == "dBERT Tiny (Tagalog)"
    assert display_name(str(d), override="mine") == "mine" and display_name("micro") == "micro"


def test_a_class_never_predicted_is_warned_and_the_matrix_header_keeps_labels_apart():
    from ds_distil.finetune.scoring import class_warnings
    from ds_distil.finetune.summary import result_lines

    labels = ["contradiction", "entailment", "neutral"]
    gold = ["contradiction"] * 40 + ["entailment"] * 20 + ["neutral"] * 40
    # entailment never predicted; half the predictions each for the other two: nothing near a collapse
    pred = ["contradiction"] * 40 + ["contradiction"] * 10 + ["neutral"] * 10 + ["neutral"] * 40
    ex = [Example(f"p{i}", lab, f"h{i}") for i, lab in enumerate(gold)]
    task = Task("nli", "pair", "accuracy", {"train": ex, "valid": ex, "test": ex})
    feats = [{"index": i, "labels": labels.index(lab)} for i, lab in enumerate(gold)]
    ev = evaluate(task, {i: labels.index(p) for i, p in enumerate(pred)}, feats)
    assert collapse_warning(task, ev) is None  # 50% on each of two classes: the one-class check says nothing
    warned = class_warnings(task, ev)
    assert len(warned) == 1
    assert warned[0].startswith("class 'entailment' (20 of the 100 test examples) is never predicted: recall 0.0000")
    # under the stated share (10% of its support) is warned too: 'hate' predicted once for 20
    gold2 = ["ok"] * 80 + ["hate"] * 20
    rare = class_warnings(seq_task(gold2), evaluate(seq_task(gold2), {i: int(i != 99) for i in range(100)}, feats_of(gold2)))
    assert rare == [w for w in rare if w.startswith("class 'hate' (20 of the 100 test examples) is predicted only 1 times (5.0% of its support)")] != []
    assert class_warnings(seq_task(gold2), evaluate(seq_task(gold2), {i: int(i < 78 or i > 81) for i in range(100)}, feats_of(gold2))) == []
    assert class_warnings(task, evaluate(task, {i: labels.index(g) for i, g in enumerate(gold)}, feats)) == []  # a perfect model: none

    res = {"model_name": "m", "task": "nli", "dataset": "d", "seed": 1, "metric": "accuracy", "labels": labels,
           "evaluation": {"test": ev, "valid": ev}, "baselines": {}, "warnings": warned}
    lines = result_lines(res)
    assert lines[1] == f"  test  accuracy {ev['accuracy']:.4f} | macro-F1 {ev['macro_f1']:.4f}"
    header = lines[lines.index("  confusion matrix (test; rows: true label, columns: predicted):") + 1]
    assert header.split() == labels  # "contradictionentailment" before: 9-wide columns for 13-letter labels
    assert "  WARNING: class 'entailment' (20 of the 100 test examples) is never predicted" in "\n".join(lines)


def test_one_line_puts_the_model_beside_the_baselines_on_valid_and_test():
    from ds_distil.finetune.summary import comparison_line

    def scores(v, t):
        return {"valid": {"score": v}, "test": {"score": t}}

    res = {"metric": "accuracy", "evaluation": {"valid": {"score": 0.8668}, "test": {"score": 0.6772}},
           "baselines": {"majority": scores(0.5, 0.52), "bow": scores(0.88, 0.70)}}
    assert comparison_line(res) == ("  model vs baselines (accuracy): valid 0.8668 (majority class 0.5000, bag of words 0.8800) | "
                                    "test 0.6772 (majority class 0.5200, bag of words 0.7000): BELOW the bag of words on test")
    res["evaluation"]["test"]["score"] = 0.5
    assert comparison_line(res).endswith(": BELOW the majority class and the bag of words on test")
    res["evaluation"]["test"]["score"] = 0.7
    assert comparison_line(res).endswith(": at or above every baseline on test")
