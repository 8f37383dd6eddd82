"""Table 8 (not in the paper; a study's `task_kd`): task distillation. The task teacher, each student alone, with KD on
its labelled rows and with KD + the held-back rows as a transfer set, beside bag of words and the majority class.

Each student row has its difference to the student alone per task, marked where it is larger than the seed spread (the
larger standard deviation of the two rows); each taught row what its teacher said (the same for every seed: one teacher
run per task): its agreement with the gold labels of the labelled rows and of the transfer rows (held back, so known),
and its mean confidence on the transfer rows (its top probability at T = 1; beside its agreement, how calibrated the
targets were). These are the measurements behind "the teacher taught (or did not)".
"""

from __future__ import annotations

import statistics

TITLE = "Table 8 (beyond the paper): task distillation, a finetuned teacher teaching the student on the task"


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def _teacher_said(runs: list[dict]) -> dict:
    """What the teacher said of the rows of a KD row's first run (from its results.json `distillation`)."""
    for r in runs:
        t = ((r.get("distillation") or {}).get("teacher")) or {}
        if t:
            transfer = t.get("transfer") or {}
            return {"train_agreement": (t.get("train") or {}).get("agreement"), "transfer_agreement": transfer.get("agreement"),
                    "transfer_confidence": transfer.get("mean_confidence"), "transfer_rows": transfer.get("rows")}
    return {}


def _reference(cells: dict, rid: str, tasks: list[str], name: str) -> dict:
    """A baseline's test score per task, from the runs of row `rid` (identical for all its seeds: the same rows)."""
    out = {}
    for t in tasks:
        found = [r["baselines"][name] for r in cells.get((rid, t), []) if name in r.get("baselines", {})]
        out[t] = _stats([found[0]["test"]["score"]]) if found else None
    return out


def build(plan: dict, cells: dict, tasks: list[str]) -> dict | None:
    """Table 8's rows, or None where the study has no task_kd rows. `cells`: (row id, task) -> the results of its runs."""
    kd_rows = [row for row in plan["rows"] if 8 in row["tables"]]
    if not kd_rows:
        return None

    def score(rid: str, t: str) -> dict | None:
        return _stats([r["score"] for r in cells.get((rid, t), [])])

    rows = []
    for row in kd_rows:
        out = {"id": row["id"], "label": row["label"], "kind": row["kind"], "cells": {t: score(row["id"], t) for t in tasks},
               "teacher_said": {t: _teacher_said(cells.get((row["id"], t), [])) for t in tasks}, "diff": {}, "beyond_spread": {}}
        alone = row.get("student")
        if alone and alone != row["id"]:
            for t in tasks:
                a, b = out["cells"][t], score(alone, t)
                if a and b:
                    out["diff"][t] = a["mean"] - b["mean"]
                    out["beyond_spread"][t] = abs(out["diff"][t]) > max(a["std"], b["std"])
        rows.append(out)
    student = next((row["id"] for row in kd_rows if row["kind"] == "kd-student"), None)
    references = []
    if student:
        references.append({"id": "bow", "label": "Bag of words, on the students' labelled rows", "cells": _reference(cells, student, tasks, "bow")})
    references.append({"id": "bow-all", "label": "Bag of words, on every labelled row (the teacher's)",
                       "cells": _reference(cells, "kd-teacher", tasks, "bow")})
    references.append({"id": "majority", "label": "Majority class", "cells": _reference(cells, student or "kd-teacher", tasks, "majority")})
    for ref in references:
        ref.update(kind="reference", teacher_said={}, diff={}, beyond_spread={})
    return {"title": TITLE, "tasks": tasks, "rows": rows + references}


def _pct(s: dict | None) -> str:
    if s is None:
        return "-"
    return f"{s['mean'] * 100:.2f} ± {s['std'] * 100:.2f}" if s["n"] > 1 else f"{s['mean'] * 100:.2f}"


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}"


def render(table: dict, metric: dict) -> list[str]:
    tasks = table["tasks"]
    head = ["model", *[f"{t} ({metric[t]})" for t in tasks], *[f"Δ {t} vs alone" for t in tasks],
            *[f"{t}: teacher agreement, labelled / transfer rows (%)" for t in tasks], *[f"{t}: teacher confidence, transfer rows (%)" for t in tasks]]
    lines = [f"## {table['title']}", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in table["rows"]:
        said = row["teacher_said"]
        vals = [row["label"], *[_pct(row["cells"][t]) for t in tasks]]
        vals += [("-" if t not in row["diff"] else f"{row['diff'][t] * 100:+.2f}{' *' if row['beyond_spread'][t] else ''}") for t in tasks]
        vals += [(f"{_share(said[t].get('train_agreement'))} / {_share(said[t].get('transfer_agreement'))}" if said.get(t) else "-")
                 for t in tasks]
        vals += [(_share(said[t].get("transfer_confidence")) if said.get(t) else "-") for t in tasks]
        lines.append("| " + " | ".join(vals) + " |")
    lines += ["", "Δ: the row's mean minus the student alone's, in points; * where it is larger than the seed spread (the larger "
              "standard deviation of the two rows). The student rows train on the same labelled rows (the labels of the "
              "held-back rows never seen); the teacher trained on every labelled row, one seed. Teacher agreement: its argmax "
              "against the gold labels (per word for token tasks); confidence: its mean top probability at T = 1, beside "
              "its agreement on the same rows a measure of its calibration.", ""]
    return lines
