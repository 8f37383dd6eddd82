"""Baselines a finetuned model must beat, computed from the data and scored exactly like a model's
predictions (ds_distil.scoring), so that results.json and the report can show them beside it.

Each entry of BASELINES takes the task and the featurised splits and returns a description plus
predictions per split in the model's format. More baselines (a bag-of-words classifier, say) are a
function and one entry here; the report shows every baseline found in results.json as a row.
"""

from __future__ import annotations

from collections import Counter

from ds_distil.data.tasks import Task
from ds_distil.scoring import evaluate


def majority(task: Task, feats: dict[str, list[dict]]) -> tuple[dict, dict[str, dict]]:
    """The most frequent training label (per word for token tasks; ties: the first label) for every example."""
    counts = Counter(lab for f in feats["train"] for lab in (f["labels"] if isinstance(f["labels"], list) else [f["labels"]])
                     if lab != -100)
    top = max(sorted(counts), key=lambda lab: counts[lab])
    preds = {}
    for split in ("valid", "test"):
        if task.kind == "token":
            preds[split] = {f["index"]: [top] * len(f["labels"]) for f in feats[split]}
        else:
            preds[split] = {f["index"]: top for f in feats[split]}
    return {"label": task.labels[top], "description": f"always '{task.labels[top]}', the most frequent training label"}, preds


BASELINES = {"majority": majority}


def run_baselines(task: Task, feats: dict[str, list[dict]]) -> dict[str, dict]:
    """{name: {description..., valid: scores, test: scores}}; scores: score, accuracy, macro_f1."""
    out = {}
    for name, fn in BASELINES.items():
        info, preds = fn(task, feats)
        for split, p in preds.items():
            ev = evaluate(task, p, feats[split])
            info[split] = {k: ev[k] for k in ("score", "accuracy", "macro_f1")}
        out[name] = info
    return out
