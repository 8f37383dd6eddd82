"""What a finetuning run found, for results.json and the console: the data (dataset name, files read
with their sha256, label map, label distribution per split, duplicates), the evaluation of each split (beside
accuracy and macro-F1: per-class scores, the confusion matrix and the score's 95% interval), the baselines
(ds_distil.finetune.baselines) and warnings (leaked or repeated rows, truncation, one class predicted for nearly
everything, classes never predicted, held-out splits too small to tell models apart). Each warning is printed once:
the data's before training, the evaluation's in the final summary."""

from __future__ import annotations

from ds_distil.data import duplicates
from ds_distil.data.examples import Task
from ds_distil.finetune import lengths
from ds_distil.finetune.baselines import run_baselines
from ds_distil.finetune.scoring import class_warnings, collapse_warning, evaluate, interval, label_counts, small_split_warning

MAX_CONSOLE_CLASSES = 12  # more classes (POS tags): the confusion matrix is in results.json only


def describe_data(task: Task) -> dict:
    return {
        "dataset": task.dataset,
        "data": {"source": task.source, **task.provenance},
        "labels": list(task.labels),
        "label_map": {label: i for i, label in enumerate(task.labels)},
        "splits": {s: {"examples": len(task.splits[s]), "label_counts": label_counts(task, s)} for s in ("train", "valid", "test")},
        "duplicates": duplicates.report(task),
    }


def data_warnings(data: dict, steps: int | None = None) -> list[str]:
    """What makes scores mislead before any training: held-out rows that also occur in training, splits made mostly of
    repeats (training: with the share of the run's `steps` they take), text cut by max_length."""
    return duplicates.warnings(data["duplicates"], steps) + (lengths.warnings(data["truncation"]) if "truncation" in data else [])


def evaluate_run(task: Task, preds: dict[str, dict], feats: dict[str, list[dict]]) -> dict:
    """{evaluation: {valid, test}, baselines, warnings, one_class} from the model's predictions of valid and test; each
    split's evaluation with the 95% interval of its score, warned for a split under SMALL_SPLIT rows."""
    evaluation = {split: evaluate(task, preds[split], feats[split]) for split in ("valid", "test")}
    for split, ev in evaluation.items():
        ev["interval95"] = interval(task, preds[split], feats[split])
    collapse = collapse_warning(task, evaluation["test"])
    small = [small_split_warning(task, evaluation[split], split) for split in ("valid", "test")]
    warnings = [w for w in [collapse] if w] + class_warnings(task, evaluation["test"]) + [w for w in small if w]
    return {"evaluation": evaluation, "baselines": run_baselines(task, feats), "warnings": warnings, "one_class": collapse is not None}


def _pct(n: int, total: int) -> str:
    return f"{n:,} ({n / max(total, 1):.1%})"


def data_lines(res: dict) -> list[str]:
    """The label distribution of each split, as a small table."""
    splits = res["splits"]
    lines = [f"data: {res['task']} / dataset '{res['dataset']}' ({res['data']['source']}): " +
             " | ".join(f"{s} {v['examples']:,}" for s, v in splits.items()) + " examples"]
    for split in ("test", "valid"):
        held = res["data"].get(f"{split}_from_train")
        if held:
            lines.append(f"  {split}: {held['examples']:,} rows held out of train (task.{split}_fraction={held['fraction']}, seed "
                         f"{held['seed']}, stratified, grouped by {' + '.join(held.get('grouped_by', ['text']))})")
    sample = res["data"].get("train_sample")
    if sample:
        lines.append(f"  train: a stratified sample of {sample['examples']:,} of {sample['of']:,} rows (task.max_train_examples, seed {sample['seed']})")
    lines += duplicate_lines(res["duplicates"]) if "duplicates" in res else []
    lines += lengths.lines(res["truncation"]) if "truncation" in res else []
    if len(res["labels"]) <= MAX_CONSOLE_CLASSES:
        width = max(len(str(lab)) for lab in res["labels"]) + 2
        lines.append("  " + "label".ljust(width) + "".join(s.rjust(18) for s in splits))
        for lab in res["labels"]:
            lines.append("  " + str(lab).ljust(width) + "".join(_pct(v["label_counts"][lab], sum(v["label_counts"].values())).rjust(18)
                                                             for v in splits.values()))
    return lines


def duplicate_lines(dup: dict) -> list[str]:
    """Copies within each split and texts shared across splits, in two lines."""
    def within(s: str, v: dict) -> str:
        conflict = f", {v['conflicting_labels']:,} texts with 2+ labels" if v["conflicting_labels"] else ""
        return f"{s} {v['duplicate_rows']:,} ({v['duplicate_share']:.1%}; {v['distinct']:,} distinct{conflict})"

    across = dup["across"]
    lines = ["  duplicate rows (" + dup["normalisation"] + "): " + " | ".join(within(s, v) for s, v in dup["splits"].items()),
             "  shared across splits: " + " | ".join(f"{name.replace('_in_', ' rows in ')} {o['rows']:,} ({o['share']:.1%})"
                                                      for name, o in across.items())]
    if "groups_across" in dup:
        lines.append("  groups (task.group_column) shared across splits: " + " | ".join(
            f"{name.replace('_in_', ' rows in ')} {o['rows']:,} ({o['share']:.1%})" for name, o in dup["groups_across"].items()))
    if "dropped" in dup:
        d = dup["dropped"]
        valid = (f"validation: dropped {d['valid_duplicates']:,} repeated rows, {d['valid_rows_left']:,} left; "
                 if "valid_duplicates" in d else "")
        lines.append(f"  task.dedup=drop: training: dropped {d['train_duplicates']:,} repeated rows and {d['train_in_valid_or_test']:,} "
                     f"rows whose text is in validation or test, {d['train_rows_left']:,} left; {valid}test: left as it is "
                     "(its scores compare with other runs on the same files)")
    return lines


BASELINE_NAMES = {"bow": "bag of words", "majority": "majority class"}


def comparison_line(res: dict) -> str:
    """One line: the model against every baseline on validation and test, and where it stands on test."""
    metric, base = res["metric"], res["baselines"]
    parts = []
    for split in ("valid", "test"):
        others = ", ".join(f"{BASELINE_NAMES.get(n, n)} {b[split]['score']:.4f}" for n, b in base.items())
        parts.append(f"{split} {res['evaluation'][split]['score']:.4f} ({others})")
    model = res["evaluation"]["test"]["score"]
    beaten_by = [BASELINE_NAMES.get(n, n) for n, b in base.items() if b["test"]["score"] > model]
    verdict = (f"BELOW the {' and the '.join(beaten_by)} on test" if beaten_by else
               "at or above every baseline on test")
    return f"  model vs baselines ({metric}): " + " | ".join(parts) + f": {verdict}"


def result_lines(res: dict) -> list[str]:
    """Scores, baselines, per-class table, confusion matrix and warnings of a results.json dict."""
    test, valid = res["evaluation"]["test"], res["evaluation"]["valid"]
    metric = res["metric"]
    def scores(ev: dict) -> str:
        acc = f" | accuracy {ev['accuracy']:.4f}" if metric != "accuracy" else ""
        return f"{metric} {ev['score']:.4f}{acc} | macro-F1 {ev['macro_f1']:.4f}"

    lines = [f"{res['model_name']} on {res['task']} / {res['dataset']} (seed {res['seed']}):",
             f"  test  {scores(test)}", f"  valid {scores(valid)}"]
    for name, b in res["baselines"].items():
        lines.append(f"  baseline {name} ({b['description']}): test {metric} {b['test']['score']:.4f} | "
                     f"macro-F1 {b['test']['macro_f1']:.4f}")
    if res["baselines"]:
        lines.append(comparison_line(res))
    labels = res["labels"]
    if len(labels) <= MAX_CONSOLE_CLASSES:
        width = max(max(len(str(lab)) for lab in labels) + 2, 7)
        lines.append("  per class (test):")
        lines.append("  " + "label".ljust(width) + "".join(h.rjust(11) for h in ("precision", "recall", "f1", "support", "predicted")))
        for lab in labels:
            c = test["per_class"][lab]
            lines.append("  " + str(lab).ljust(width) + "".join(f"{c[k]:.4f}".rjust(11) for k in ("precision", "recall", "f1")) +
                         f"{c['support']:,}".rjust(11) + f"{c['predicted']:,}".rjust(11))
        lines.append("  confusion matrix (test; rows: true label, columns: predicted):")
        col = max(9, max(len(str(lab)) for lab in labels) + 2)  # a label as wide as the column would run into the next
        lines.append("  " + "".ljust(width) + "".join(str(lab).rjust(col) for lab in labels))
        for lab, row in zip(labels, test["confusion_matrix"]):
            lines.append("  " + str(lab).ljust(width) + "".join(f"{n:,}".rjust(col) for n in row))
    else:
        lines.append(f"  {len(labels)} classes: per-class scores and the confusion matrix are in results.json")
    shown = res.get("warnings_before_training", [])  # printed once, before training; all of them are in results.json
    lines += [f"  WARNING: {w}" for w in res.get("warnings", []) if w not in shown]
    if shown:
        many = len(shown) != 1
        lines.append(f"  ({len(shown)} warning{'s' * many} about the data, printed before training, {'are' if many else 'is'} in "
                     "results.json too)")
    return lines
