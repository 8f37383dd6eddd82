"""The paper's Tables 2-5 from a study's finetuning results (`ds-distil report --study OUT/plan.json`).

* Table 2: the teacher (mBERT, or the stand-in pretrained here), the baselines, the students and
  the From Scratch rows on every task, with each model's training runtime per task and its average
  speedup over the teacher (mean over tasks of runtime(teacher) / runtime(model)), as in the paper.
* Table 3: students distilled on fractions of the corpus; Table 4: from the MLM-conditioned teacher;
  Table 5: with the teacher's embeddings copied, and copied + frozen. Each with its difference to
  the teacher's row (the paper's "mBERT" row), in points.
* Table 6 (not in the paper): the students distilled with other objectives (TinyBERT, MiniLMv2), each with its
  objective, its difference to the student's own row (distilled with the study's objective) and its From Scratch
  row, and the validation perplexity and KL(teacher || student) of each distillation run.
* Table 7 (not in the paper; `ablations.teacher_signal`): the same student, teacher, steps and static masks distilled from
  the study's sampled teacher cache, with the live teacher and from a top-k cache of the same size: scores, validation
  perplexity, KL(teacher || student) and top-1 agreement, and each distillation's wall time (and its cache's build).
* With a study's `cache` on, a section on what the caches cost and saved: each cache's build time, the students that
  read it, and the teacher time they would have paid running it live (their samples at the build's measured rate).
* Table 8 (not in the paper; a study's `task_kd`): task distillation, in reporting/task_kd_table.py.
* Every table ends with two reference rows computed on the same splits at finetuning time
  (ds_distil/finetune/baselines.py): the bag-of-words linear model and the majority class.

Scores are mean ± standard deviation over the finetuning seeds (one distillation run per student:
the seeds vary finetuning only). Validation perplexity and the last training MLM loss of each
distillation run come from its metrics.jsonl (`val/perplexity`, `loss/mlm`) where written. The
measured wall time of every stage (from the runner's markers) is listed beside the study's estimate.
"""

from __future__ import annotations

import fnmatch
import json
import statistics
from collections import defaultdict
from pathlib import Path

from ds_distil.core.errors import UserError
from ds_distil.reporting import task_kd_table
from ds_distil.reporting.report import collect, dataset_key, model_name

REFERENCE = {"bow": "Bag of words (linear model on unigrams + bigrams)", "majority": "Majority class"}
TITLES = {2: "Table 2: students, teacher and baselines", 3: "Table 3: distillation on less of the corpus",
          4: "Table 4: distilling from an MLM-conditioned teacher", 5: "Table 5: student embeddings copied from the teacher",
          6: "Table 6 (beyond the paper): distillation objectives",
          7: "Table 7 (beyond the paper): the teacher signal at equal steps: sampled cache, live teacher, top-k cache"}


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def last_metric(run_dir: str | None, key: str) -> float | None:
    """The last value of `key` in a distillation run's metrics.jsonl (None when absent: older runs, no validation)."""
    if not run_dir:
        return None
    path = Path(run_dir) / "metrics.jsonl"
    value = None
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
            if rec.get(key) is not None:
                value = rec[key]
    except OSError:
        return None
    return value


def build(plan: dict, results: list[dict], stage_times: dict[str, float]) -> dict:
    tasks = plan["tasks"]
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    datasets = defaultdict(set)
    for r in results:
        cells[(model_name(r), r["task"])].append(r)
        datasets[r["task"]].add(dataset_key(r))
    metric = {t: next((r["metric"] for r in results if r["task"] == t), "?") for t in tasks}
    rows_by_id = {row["id"]: row for row in plan["rows"]}

    def cell(rid: str, task: str) -> dict:
        runs = cells.get((rid, task), [])
        return {"score": _stats([r["score"] for r in runs]), "runtime_s": _stats([r["train_runtime_s"] for r in runs]),
                "seeds": sorted(r.get("seed") for r in runs)}

    def model_row(rid: str) -> dict:
        row = rows_by_id[rid]
        return {"id": rid, "label": row["label"], "kind": row["kind"], "cells": {t: cell(rid, t) for t in tasks},
                "val_perplexity": last_metric(row.get("run_dir"), "val/perplexity"),
                "train_mlm_loss": last_metric(row.get("run_dir"), "loss/mlm"), "val_kl": last_metric(row.get("run_dir"), "val/kl"),
                "val_agreement": last_metric(row.get("run_dir"), "val/top1_agreement"), "objective": objective_of(row.get("run_dir")),
                "signal": _signal(row, plan), "distill_s": stage_times.get(f"distill/{rid}"),
                "cache_s": stage_times.get(row.get("cache") or "")}

    # reference rows: identical for every run of a task on the same data; taken from the teacher's runs where there are any
    reference = []
    for name, label in REFERENCE.items():
        cells_ref, desc = {}, ""
        for t in tasks:
            runs = cells.get(("teacher", t)) or [r for r in results if r["task"] == t]
            found = [r["baselines"][name] for r in runs if name in r.get("baselines", {})]
            cells_ref[t] = {"score": _stats([found[0]["test"]["score"]]) if found else None, "runtime_s": None, "seeds": []}
            if found and name == "bow":
                desc += f"{t}: {found[0].get('model', '')}; "
        reference.append({"id": name, "label": label, "kind": "reference", "cells": cells_ref, "description": desc.rstrip("; "),
                          "val_perplexity": None, "train_mlm_loss": None})

    tables = {}
    teacher = model_row("teacher") if "teacher" in rows_by_id else None  # none: a study of finetuning alone (teacher.source: none)
    for number in (2, 3, 4, 5, 6, 7) if teacher else ():
        ids = [row["id"] for row in plan["rows"] if number in row["tables"]]
        if number != 2:
            ids = _ablation_order(plan["rows"], number)
            if len(ids) <= 1:
                continue  # no ablation of this kind in the study
        rows = [model_row(rid) for rid in ids] + reference
        cols = tasks if number == 2 else [t for t in tasks if t in plan.get("ablation_tasks", tasks)]
        for row in rows:
            row["diff"] = {t: _diff(row["cells"][t]["score"], teacher["cells"][t]["score"]) for t in cols} if number != 2 else None
        if number in (6, 7):  # each variant against its student's own row (Table 6: the From Scratch rows beside)
            rows = _with_scratch(rows, rows_by_id, model_row) if number == 6 else rows
            by_id = {r["id"]: r for r in rows}
            for row in rows:
                base = by_id.get(rows_by_id.get(row["id"], {}).get("student") or "")
                row["diff"] = {t: (None if base is None or base is row else _diff(row["cells"][t]["score"], base["cells"][t]["score"]))
                               for t in cols}
        if number == 2:
            for row in rows:
                row["speedup"] = _speedup(row, teacher, tasks)
        tables[number] = {"title": TITLES[number], "rows": rows, "tasks": cols}
    kd = task_kd_table.build(plan, cells, tasks)
    if kd:
        tables[8] = kd
    mixed = {t: len(v) for t, v in datasets.items() if len(v) > 1}
    return {"study": plan["study"]["name"], "tasks": tasks, "metric": metric, "seeds": plan["seeds"], "tables": tables,
            "mixed_datasets": mixed, "stage_times": stage_times, "caches": cache_costs(plan, stage_times)}


def _signal(row: dict, plan: dict) -> str:
    """What a distilled row learned from: the live teacher, or a cache (its method and K)."""
    k = (plan["study"].get("cache") or {}).get("k")
    signal = (row.get("variant") or {}).get("signal")
    if signal == "top_k":
        return f"top-{k} cache"
    if row.get("cache"):
        return f"sampled cache (K = {k})"
    return "live teacher" if row.get("run_dir") and row.get("kind") != "teacher" else "-"


def cache_costs(plan: dict, stage_times: dict[str, float]) -> list[dict]:
    """Per teacher cache of the study: its build time and size, the rows that read it, and the teacher time those rows
    would have paid running it live: the samples each distilled (train/tokens_seen / seq_len) at the build's measured
    seconds per sample record (teacher forward and draws; an estimate, which counts the build's own overheads too)."""
    out = []
    for stage in plan.get("stages", []):
        if stage.get("command") != "teacher-cache":
            continue
        try:
            manifest = json.loads((Path(stage["out"]) / "manifest.json").read_text())
            records = sum(f["samples"] for split in manifest["splits"].values() for copy in split["copies"] for f in copy)
            seq_len = manifest["made_for"]["seq_len"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not built (yet)
        build_s = stage_times.get(stage["name"])
        readers = []
        for row in plan["rows"]:
            if row.get("cache") == stage["name"]:
                tokens = last_metric(row.get("run_dir"), "train/tokens_seen")
                readers.append({"id": row["id"], "samples": tokens / seq_len if tokens else None,
                                "distill_s": stage_times.get(f"distill/{row['id']}")})
        per_record = build_s / records if build_s and records else None
        would_pay = (sum(r["samples"] for r in readers if r["samples"]) * per_record) if per_record else None
        out.append({"stage": stage["name"], "build_s": build_s, "records": records, "seconds_per_record": per_record,
                    "readers": readers, "live_teacher_s": would_pay,
                    "saved_s": would_pay - build_s if would_pay is not None and build_s else None})
    return out


def _ablation_order(rows: list[dict], number: int) -> list[str]:
    """The teacher, then per student: its main row followed by its variants of this table."""
    out = ["teacher"]
    if number == 4 and any(r["id"] == "teacher-cond" for r in rows):
        out.append("teacher-cond")
    variants = [r for r in rows if r["kind"] == "variant" and number in r["tables"]]
    for student in dict.fromkeys(r["student"] for r in variants):
        out.append(student)
        out += [r["id"] for r in variants if r["student"] == student]
    return out


def _with_scratch(rows: list[dict], rows_by_id: dict, model_row) -> list[dict]:
    """Table 6's rows with each student's From Scratch row after its variants (before the reference rows)."""
    out = []
    for i, row in enumerate(rows):
        out.append(row)
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        student = rows_by_id.get(row["id"], {}).get("student")
        if student and (nxt is None or rows_by_id.get(nxt["id"], {}).get("student") != student) and f"{student}@scratch" in rows_by_id:
            out.append(model_row(f"{student}@scratch"))
    return out


def objective_of(run_dir: str | None) -> str | None:
    """The objective a distillation run trained with, from its newest checkpoint's record (None: no run, or a record
    written before objectives were recorded)."""
    if not run_dir:
        return None
    ckpts = Path(run_dir) / "checkpoints"
    try:
        tag = (ckpts / "latest").read_text().strip()
        return json.loads((ckpts / tag / "trainer_state.json").read_text())["objective"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _diff(score: dict | None, ref: dict | None) -> float | None:
    return None if score is None or ref is None else score["mean"] - ref["mean"]


def _speedup(row: dict, teacher: dict, tasks: list[str]) -> float | None:
    ratios = []
    for t in tasks:
        mine, ref = row["cells"][t]["runtime_s"], teacher["cells"][t]["runtime_s"]
        if mine and ref and mine["mean"] > 0:
            ratios.append(ref["mean"] / mine["mean"])
    return statistics.fmean(ratios) if ratios else None


# ------------------------------------------------------------------------------------ markdown


def _pct(s: dict | None) -> str:
    if s is None:
        return "-"
    return f"{s['mean'] * 100:.2f} ± {s['std'] * 100:.2f}" if s["n"] > 1 else f"{s['mean'] * 100:.2f}"


def _secs(s: dict | None) -> str:
    return "-" if s is None else (f"{s['mean']:.0f}" if s["mean"] >= 10 else f"{s['mean']:.1f}")


def render(tables: dict, plan: dict) -> str:
    study = plan["study"]
    tasks, metric = tables["tasks"], tables["metric"]
    teacher_src = study["teacher"]["source"]
    lines = [f"# Study {study['name']}: the paper's tables", ""]
    if study.get("description"):
        lines += [study["description"].strip(), ""]
    if study.get("sized_down"):
        lines += [f"**Sized down, not the paper's setting:** {study['sized_down'].strip()}", ""]
    lines += [("**Teacher:** the hub model " + study["teacher"]["hub"] + " (teacher.source: hub)." if teacher_src == "hub" else
               "**No distillation teacher** (teacher.source: none): every row is a finetuning run; the task teacher of Table 8 "
               "is a model finetuned here." if teacher_src == "none" else
               "**Teacher:** no mBERT weights were used. The teacher row is a model pretrained here with MLM from random "
               "weights on the corpus (teacher.source: pretrain), the stand-in for mBERT; the differences in Tables 3-5 "
               "are to that row."), "",
              f"Scores: test {', '.join(f'{t} {metric[t]}' for t in tasks)} in percent"
              f"{' (NER: entity-level F1, seqeval)' if 'ner' in tasks else ''}, mean ± std over "
              f"the finetuning seeds {', '.join(map(str, tables['seeds']))} (one distillation run per student). Runtime: the "
              "finetuning loop only, seconds, mean over seeds. Reference rows (bag of words, majority class) are computed on the "
              "same splits and the same training examples; they do not depend on the seed.", ""]
    for t, n in tables["mixed_datasets"].items():
        lines += [f"⚠ task {t}: results from {n} different datasets (or test files) are averaged here; check the runs.", ""]
    for number, table in sorted(tables["tables"].items()):
        if number == 8:
            lines += task_kd_table.render(table, metric)
            continue
        tasks = table["tasks"]
        lines += [f"## {table['title']}", ""]
        head = ["model", *[f"{t} ({metric[t]})" for t in tasks]]
        if number == 2:
            head += [f"{t} runtime (s)" for t in tasks] + ["avg speedup vs teacher", "val ppl", "train MLM loss"]
        elif number == 6:
            head = ["model", "objective", *head[1:], *[f"Δ {t} vs the student's row" for t in tasks], "val ppl", "val KL"]
        elif number == 7:
            head = ["model", "teacher signal", *head[1:], *[f"Δ {t} vs the student's row" for t in tasks], "val ppl", "val KL",
                    "val top-1 agreement", "distill (min)", "its cache's build (min)"]
        else:
            head += [f"Δ {t} vs teacher" for t in tasks]
        lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for row in table["rows"]:
            vals = [row["label"], *[_pct(row["cells"][t]["score"]) for t in tasks]]
            if number == 2:
                sp = row.get("speedup")
                vals += [_secs(row["cells"][t]["runtime_s"]) for t in tasks]
                vals += [f"{sp:.2f}x" if sp else "-", f"{row['val_perplexity']:.1f}" if row["val_perplexity"] else "-",
                         f"{row['train_mlm_loss']:.3f}" if row["train_mlm_loss"] else "-"]
            elif number == 6:
                vals.insert(1, row.get("objective") or ("mlm" if row["kind"] == "teacher" else "-"))
                vals += [("-" if row["diff"][t] is None else f"{row['diff'][t] * 100:+.2f}") for t in tasks]
                vals += [f"{row['val_perplexity']:.1f}" if row["val_perplexity"] else "-", f"{row['val_kl']:.3f}" if row.get("val_kl") else "-"]
            elif number == 7:
                vals.insert(1, row.get("signal") or "-")
                vals += [("-" if row["diff"][t] is None else f"{row['diff'][t] * 100:+.2f}") for t in tasks]
                vals += [f"{row['val_perplexity']:.1f}" if row["val_perplexity"] else "-", f"{row['val_kl']:.4f}" if row.get("val_kl") else "-",
                         f"{row['val_agreement']:.4f}" if row.get("val_agreement") is not None else "-",
                         f"{row['distill_s'] / 60:.1f}" if row.get("distill_s") else "-", f"{row['cache_s'] / 60:.1f}" if row.get("cache_s") else "-"]
            else:
                vals += [("-" if row["diff"][t] is None or row["id"] == "teacher" else f"{row['diff'][t] * 100:+.2f}") for t in tasks]
            lines.append("| " + " | ".join(vals) + " |")
        lines.append("")
        if number == 7:
            lines += ["Validation: the last held-out evaluation of each distillation run (its metrics.jsonl); the KL and the "
                      "top-1 agreement are against the live teacher where the run validated against it (cache.validation: "
                      "live, and the live row), else the cache's sampled estimate of the KL and no agreement.", ""]
    bow = next((r for t in tables["tables"].values() for r in t["rows"] if r["id"] == "bow"), None)
    if bow and bow.get("description"):
        lines += [f"Bag of words: the classifier chosen on each task's validation split: {bow['description']}.", ""]
    lines += _cache_lines(tables.get("caches") or [])
    order = [st["name"] for st in plan.get("stages", [])]
    lines += _stage_lines(dict(sorted(tables["stage_times"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))),
                          study.get("estimates") or {}, tables.get("stage_estimates") or {})
    return "\n".join(lines) + "\n"


def _cache_lines(caches: list[dict]) -> list[str]:
    if not caches:
        return []
    lines = ["## Teacher caches: paid once, read by every student", "",
             "A cache stage runs the teacher once over the shards (every mask copy and the held-out split); the students "
             "listed read it instead of running the teacher. *Live teacher (est.)*: the teacher time those students would "
             "have paid running it live, their samples at the build's measured seconds per sample record (an estimate: "
             "a live step runs the teacher in the step; Table 7, where present, measures a live run beside).", "",
             "| cache | build (min) | sample records | s per record | read by | samples they distilled | live teacher (est., min) "
             "| saved (est., min) |", "|---|---:|---:|---:|---|---:|---:|---:|"]
    for c in caches:
        samples = sum(r["samples"] for r in c["readers"] if r["samples"])

        def minutes(x):
            return f"{x / 60:.1f}" if x is not None else "-"

        lines.append(f"| {c['stage']} | {minutes(c['build_s'])} | {c['records']:,} | "
                     f"{f'{c_s:.4f}' if (c_s := c['seconds_per_record']) else '-'} | {', '.join(r['id'] for r in c['readers']) or '-'} | "
                     f"{samples:,.0f} | {minutes(c['live_teacher_s'])} | {minutes(c['saved_s'])} |")
    return lines + [""]


def _stage_lines(times: dict[str, float], estimates: dict[str, float], here: dict[str, float] | None = None) -> list[str]:
    """Measured minutes per group of stages against the estimate: the runner's for the machine a stage ran on (`here`,
    from its marker) where recorded, else the study's figure as written."""
    if not times:
        return []
    here = here or {}
    groups: dict[str, list] = defaultdict(lambda: [0.0, 0, 0.0, True])
    for name, secs in times.items():
        g = groups[_group(name)]
        g[0] += secs
        g[1] += 1
        est = here.get(name, next((m for p, m in estimates.items() if fnmatch.fnmatchcase(name, p)), None))
        g[2] += est or 0.0
        g[3] &= est is not None
    whose = ("the estimates for the machine they ran on (the study's figures scaled by a probe step there)" if here
             else "the study's estimates as written")
    lines = [f"## Stage times (measured wall time of this run's stages, against {whose})", "",
             "| stages | count | measured (min) | estimate (min) |", "|---|---:|---:|---:|"]
    for name, (secs, n, est, known) in groups.items():
        lines.append(f"| {name} | {n} | {secs / 60:.1f} | {f'{est:.1f}' if known else '-'} |")
    total = sum(g[0] for g in groups.values())
    lines += [f"| all | {sum(g[1] for g in groups.values())} | {total / 60:.1f} | |", ""]
    return lines


def _group(name: str) -> str:
    parts = name.split("/")
    if parts[0] == "finetune":  # per row and task
        return "/".join(parts[:3])
    return parts[0]


def _done_markers(out: Path) -> list[dict]:
    """The runner's markers of finished stages under OUT/.experiment/stages (a torn or foreign file is skipped)."""
    done = []
    root = out / ".experiment" / "stages"
    for p in sorted(root.rglob("*.json")) if root.is_dir() else []:
        try:
            m = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(m, dict) and m.get("state") == "done" and isinstance(m.get("name"), str):
            done.append(m)
    return done


def stage_times(out: Path) -> dict[str, float]:
    """Seconds of every finished stage, from the runner's markers."""
    return {m["name"]: m["seconds"] for m in _done_markers(out) if isinstance(m.get("seconds"), (int, float))}


def stage_estimates(out: Path) -> dict[str, float]:
    """Minutes the runner estimated for every finished stage on the machine it ran on (the study's figures scaled by the
    probe: study/estimate.py), where its marker records them."""
    return {m["name"]: m["estimate_min"] for m in _done_markers(out) if isinstance(m.get("estimate_min"), (int, float))}


def write_tables(plan_path: str | Path, run_dirs: list[str], out: str | Path) -> Path:
    plan_path = Path(plan_path)
    try:
        plan = json.loads(plan_path.read_text())
        plan["rows"], plan["study"]["name"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{plan_path} is not a study's plan.json (written by `ds-distil experiment`)") from None
    results = collect(run_dirs)
    tables = build(plan, results, stage_times(plan_path.parent))
    tables["stage_estimates"] = stage_estimates(plan_path.parent)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(render(tables, plan))
    (out / "tables.json").write_text(json.dumps(tables, indent=1))
    return out / "tables.md"
