"""Scores of one split's predictions: the task's metric, and what a user needs to trust it: accuracy,
macro-F1, per-class precision/recall/F1, the confusion matrix, the predicted-label distribution, and
a warning when a classifier predicts one class for (nearly) everything, and one for each class it (nearly)
never predicts.

Predictions come as `{example index: label id}` (sequence and pair tasks) or `{index: [label id per
sub-word]}` (token tasks, scored on each word's first sub-word, like the gold labels in `feats`).
Per-class figures come from scikit-learn (sequence tasks, POS tags) or seqeval (NER entity types).
"""

from __future__ import annotations

from collections import Counter

from ds_distil.data.examples import Task

COLLAPSE_SHARE = 0.95  # one predicted class on more than this share of the test set: warn
UNDERPREDICTED_SHARE = 0.1  # a class predicted fewer times than this share of its support (never, at worst): warn
SMALL_SPLIT = 200  # a held-out split of fewer rows: its score's 95% interval is warned
RESAMPLES = 1000  # of the bootstrap interval
NAMES = {"valid": "validation", "test": "test"}


def aligned(task: Task, preds: dict, feats: list[dict]) -> tuple[list, list]:
    """(gold, predicted) label names: one per example, or one list of word tags per sentence (token tasks)."""
    names = task.labels
    if task.kind != "token":
        return [names[f["labels"]] for f in feats], [names[preds[f["index"]]] for f in feats]
    gold, pred = [], []
    for f in feats:
        pairs = [(names[lab], names[p]) for lab, p in zip(f["labels"], preds[f["index"]]) if lab != -100]
        gold.append([g for g, _ in pairs])
        pred.append([p for _, p in pairs])
    return gold, pred


def evaluate(task: Task, preds: dict, feats: list[dict]) -> dict:
    """The task metric as `score`, plus accuracy, macro-F1, per-class scores and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    gold, pred = aligned(task, preds, feats)
    flat_gold = [t for row in gold for t in row] if task.kind == "token" else gold
    flat_pred = [t for row in pred for t in row] if task.kind == "token" else pred
    labels = task.labels
    p, r, f, support = precision_recall_fscore_support(flat_gold, flat_pred, labels=labels, zero_division=0)
    predicted = Counter(flat_pred)
    per_class = {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i]),
                       "predicted": predicted[lab]} for i, lab in enumerate(labels)}
    # macro over the classes that occur (in the gold labels or the predictions): a class absent from
    # this split and never predicted says nothing about the model
    present = [lab for lab in labels if per_class[lab]["support"] or per_class[lab]["predicted"]]
    accuracy = sum(a == b for a, b in zip(flat_gold, flat_pred)) / max(len(flat_gold), 1)
    out = {
        "examples": len(feats),
        "accuracy": accuracy,
        "macro_f1": sum(per_class[lab]["f1"] for lab in present) / max(len(present), 1),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(flat_gold, flat_pred, labels=labels).tolist(),  # rows: true, columns: predicted
        "predicted_counts": {lab: predicted[lab] for lab in labels},
    }
    out["score"] = accuracy
    if task.metric == "f1":  # NER: entity-level, strict IOB2 (seqeval); per entity type instead of per tag
        from seqeval.metrics import classification_report, f1_score
        from seqeval.scheme import IOB2

        out["score"] = float(f1_score(gold, pred, mode="strict", scheme=IOB2, zero_division=0))
        rep = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
        out["per_entity"] = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                                 "support": int(v["support"])} for k, v in rep.items() if not k.endswith(" avg")}
        out["macro_f1"] = float(rep["macro avg"]["f1-score"]) if "macro avg" in rep else 0.0
    return out


def score(task: Task, split: str, preds: dict, feats: list[dict]) -> float:
    """The task metric alone: accuracy (sequence/pair; POS over words), or seqeval's entity-level F1 for NER."""
    return evaluate(task, preds, feats)["score"]


def label_counts(task: Task, split: str) -> dict[str, int]:
    """How often each label occurs in a split (per word for token tasks), in label-id order."""
    counts = Counter(t for ex in task.splits[split] for t in (ex.label if isinstance(ex.label, list) else [ex.label]))
    return {lab: counts[lab] for lab in task.labels}


def collapse_warning(task: Task, evaluation: dict, split: str = "test") -> str | None:
    """A warning when one class is predicted for more than COLLAPSE_SHARE of a classification split."""
    if task.kind == "token" or not evaluation["examples"]:
        return None
    label, n = max(evaluation["predicted_counts"].items(), key=lambda kv: kv[1])
    share = n / evaluation["examples"]
    if share <= COLLAPSE_SHARE:
        return None
    gold_share = evaluation["per_class"][label]["support"] / evaluation["examples"]
    return (f"the model predicts '{label}' for {share:.1%} of the {split} set ({n:,} of {evaluation['examples']:,}; '{label}' is "
            f"{gold_share:.1%} of the true labels): it has not learnt to tell the classes apart, and its accuracy mostly "
            "measures the label distribution; compare with the majority-class baseline, and try more epochs, another "
            "train.lr or more data")


def class_warnings(task: Task, evaluation: dict, split: str = "test") -> list[str]:
    """A warning for every class of a classification split that occurs but is predicted fewer than
    UNDERPREDICTED_SHARE times as often as it occurs (never, at worst): accuracy can look fine while it does."""
    if task.kind == "token":
        return []
    out = []
    for label, c in evaluation["per_class"].items():
        if c["support"] and c["predicted"] < UNDERPREDICTED_SHARE * c["support"]:
            how = "never predicted" if not c["predicted"] else (f"predicted only {c['predicted']:,} times "
                                                                f"({c['predicted'] / c['support']:.1%} of its support)")
            out.append(f"class '{label}' ({c['support']:,} of the {evaluation['examples']:,} {split} examples) is {how}: recall "
                       f"{c['recall']:.4f}; the model has not learnt it (macro-F1 {evaluation['macro_f1']:.4f} says so, accuracy "
                       "does not); try more epochs, another train.lr, or more training rows of the class")
    return out


def _row_counts(task: Task, gold: list, pred: list):
    """Per row, the counts the task metric sums: (correct, total) for accuracy (a row, or a sentence's words),
    (true positives, predicted entities, gold entities) for NER's strict IOB2 entity F1 (seqeval's definition)."""
    import numpy as np

    if task.kind != "token":
        return np.array([[float(g == p), 1.0] for g, p in zip(gold, pred)])
    if task.metric != "f1":
        return np.array([[float(sum(a == b for a, b in zip(g, p))), float(len(g))] for g, p in zip(gold, pred)])
    from seqeval.scheme import IOB2, Entities

    def entities(rows):
        return [{e.to_tuple()[1:] for e in sent} for sent in Entities(rows, IOB2).entities]

    return np.array([[float(len(g & p)), float(len(p)), float(len(g))] for g, p in zip(entities(gold), entities(pred))])


def interval(task: Task, preds: dict, feats: list[dict], resamples: int = RESAMPLES, seed: int = 0) -> list[float]:
    """The 95% interval of the task metric on these rows: a percentile bootstrap over rows (sentences for token tasks),
    `resamples` draws, seeded."""
    import numpy as np

    counts = _row_counts(task, *aligned(task, preds, feats))
    draws = np.random.default_rng(seed).integers(0, len(counts), size=(resamples, len(counts)))
    sums = counts[draws].sum(axis=1)  # (resamples, columns of _row_counts)
    if sums.shape[1] == 2:  # accuracy: correct / total
        scores = sums[:, 0] / np.maximum(sums[:, 1], 1.0)
    else:  # entity F1: 2 tp / (predicted + gold)
        scores = 2 * sums[:, 0] / np.maximum(sums[:, 1] + sums[:, 2], 1.0)
    return [float(np.percentile(scores, 2.5)), float(np.percentile(scores, 97.5))]


def small_split_warning(task: Task, evaluation: dict, split: str) -> str | None:
    """A warning for a held-out split of fewer than SMALL_SPLIT rows, with its score's 95% interval."""
    n = evaluation["examples"]
    if n >= SMALL_SPLIT or "interval95" not in evaluation:
        return None
    lo, hi = evaluation["interval95"]
    rows = "sentences" if task.kind == "token" else "rows"
    name = "entity F1" if task.metric == "f1" else "accuracy"
    return (f"the {NAMES[split]} split has {n:,} {rows}: its {name} {evaluation['score']:.4f} has a 95% interval of {lo:.4f} to {hi:.4f} "
            f"(bootstrap over its {rows}, {RESAMPLES:,} resamples); differences between models smaller than that are noise: "
            "compare on a larger split (task.valid_fraction / task.test_fraction, or bigger files) or over several seeds")
