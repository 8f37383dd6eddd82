"""`ds-distil report`: finetuning results -> one table per task and dataset (Markdown, JSON, PNG).

A row is one model on one task and one dataset; seeds are averaged (mean and standard deviation)
only within it, never across datasets. A dataset is the name recorded in results.json (`task.dataset_name`,
default: the data directory's name); runs whose test files differ (sha256) under one name are kept
apart too. Models are named by results.json's `model_name` (from the model's card or config, see
ds_distil/model/info.py), not by their paths. Each baseline found in the results (the majority
class, computed from the data at finetuning time) is a row of its own. A last table gives each
model's training speedup over the baseline model (mBERT): the mean over the datasets both ran of
runtime(baseline) / runtime(model).
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import defaultdict
from pathlib import Path

from ds_distil.core.errors import UserError
from ds_distil.distill import card

log = logging.getLogger(__name__)

SPEED_BASELINES = ("mbert", "bert-base-multilingual-cased")


def collect(run_dirs: list[str | Path]) -> list[dict]:
    results = []
    for d in map(Path, run_dirs):
        from ds_distil.core.rundir import STAGING_INFIX

        # not the half-made outputs of running or killed commands (hidden staging siblings)
        files = [d] if d.is_file() else sorted(f for f in d.rglob("results.json") if STAGING_INFIX not in str(f.relative_to(d)))
        if not files:
            raise UserError(f"no results.json under {d}; run `ds-distil finetune --out {d} ...` first")
        for f in files:
            try:
                r = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:  # empty, truncated, not JSON, not UTF-8
                raise UserError(f"{f} is not a readable results.json ({str(e).splitlines()[0][:120] or 'empty'}); re-run that "
                                "finetune (or move the file away) and run report again") from None
            if not isinstance(r, dict):
                raise UserError(f"{f} holds a JSON {type(r).__name__}, not a `ds-distil finetune` result")
            missing = [k for k in ("model", "task", "metric", "score", "train_runtime_s") if k not in r]
            if missing:
                raise UserError(f"{f} lacks {', '.join(missing)}; it is not a `ds-distil finetune` result")
            r["_path"] = str(f)
            results.append(r)
    return results


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def model_name(r: dict) -> str:
    return r.get("model_name") or _label(r["model"])


def _label(model: str) -> str:
    """Results written before model names were recorded: a path's last components."""
    p = Path(model)
    return model if not p.is_absolute() and len(p.parts) <= 3 else "/".join(p.parts[-3:])


def dataset_key(r: dict) -> tuple[str, str, str]:
    """(task, dataset name, test file sha256 or ''): what may be averaged together."""
    data_dir = ((r.get("config") or {}).get("task") or {}).get("data_dir")
    name = r.get("dataset") or (Path(data_dir).name if data_dir else r["task"])
    test = ((r.get("data") or {}).get("files") or {}).get("test") or {}
    return r["task"], name, test.get("sha256", "")


def _one_class(res: dict) -> bool:
    """Whether a run predicted one class for nearly all of its test set. Results before `one_class` had only that
    warning in `warnings`; newer ones also warn about leaked rows, truncation and unpredicted classes there."""
    return bool(res["one_class"]) if "one_class" in res else bool(res.get("warnings"))


def build_table(results: list[dict], baseline: str | None = None) -> dict:
    by_dataset: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        by_dataset[dataset_key(r)].append(r)
    names_with_shas = defaultdict(set)
    for task, name, sha in by_dataset:
        names_with_shas[(task, name)].add(sha)
    models = sorted({model_name(r) for r in results}, key=lambda m: (m not in SPEED_BASELINES, m))
    base = baseline or next((m for m in models if m in SPEED_BASELINES), None)
    groups = []
    for (task, name, sha), runs in sorted(by_dataset.items()):
        label = name if len(names_with_shas[(task, name)]) == 1 else f"{name} [test sha256 {sha[:8] or 'unknown'}]"
        group = {"task": task, "dataset": label, "metric": runs[0]["metric"], "test_examples": runs[0].get("splits", {}).get("test", {}).get("examples"),
                 "rows": []}
        for bname in sorted({b for r in runs for b in r.get("baselines", {})}):
            found = [r["baselines"][bname] for r in runs if bname in r.get("baselines", {})]
            group["rows"].append({"model": f"baseline: {bname}" + (f" ('{found[0]['label']}')" if "label" in found[0] else ""),
                                  "kind": "baseline", "description": found[0].get("description", ""),
                                  "score": _stats([b["test"]["score"] for b in found]),
                                  "macro_f1": _stats([b["test"]["macro_f1"] for b in found])})
        per_model = defaultdict(list)
        for r in runs:
            per_model[model_name(r)].append(r)
        for m in models:
            mruns = per_model.get(m)
            if not mruns:
                continue
            macro = [r["macro_f1"] for r in mruns if r.get("macro_f1") is not None]
            group["rows"].append({"model": m, "kind": "model", "score": _stats([r["score"] for r in mruns]),
                                  "macro_f1": _stats(macro) if len(macro) == len(mruns) else None,
                                  "runtime_s": _stats([r["train_runtime_s"] for r in mruns]),
                                  "seeds": sorted(r.get("seed") for r in mruns),
                                  "one_class_runs": sum(map(_one_class, mruns))})
        groups.append(group)
    return {"groups": groups, "speed": speed_table(groups, models, base)}


def speed_table(groups: list[dict], models: list[str], base: str | None) -> dict:
    """Each model's mean over datasets of runtime(base) / runtime(model), on the datasets both ran."""
    runtime = {(id(g), row["model"]): row["runtime_s"]["mean"] for g in groups for row in g["rows"] if row["kind"] == "model"}
    rows = []
    for m in models:
        ratios = [runtime[(id(g), base)] / runtime[(id(g), m)] for g in groups if (id(g), base) in runtime and (id(g), m) in runtime]
        rows.append({"model": m, "speedup": 1.0 if m == base else (statistics.fmean(ratios) if ratios else None), "datasets": len(ratios)})
    return {"baseline": base, "rows": rows}


def _fmt(s: dict | None, pct: bool) -> str:
    if s is None:
        return "-"
    mean, std = (s["mean"] * 100, s["std"] * 100) if pct else (s["mean"], s["std"])
    return f"{mean:.2f} ± {std:.2f}" if s["n"] > 1 else f"{mean:.2f}"


def render_markdown(table: dict, results: list[dict]) -> str:
    lines = ["# Finetuning results", "",
             "One table per task and dataset. A row is one model on that dataset: the mean ± standard deviation over its "
             "seeds (never across datasets). Baseline rows are computed from the same data (majority: the most frequent "
             "training label, predicted for every test example). Scores are test-set percentages (accuracy; NER: "
             "entity-level F1 with seqeval); runtime is the training loop only, in seconds.", ""]
    notes = []
    for g in table["groups"]:
        n = f"; test {g['test_examples']:,} examples" if g.get("test_examples") else ""
        lines += [f"## {g['task']} / {g['dataset']} ({g['metric']}{n})", "",
                  f"| model | {g['metric']} | macro-F1 | train runtime (s) | seeds |", "|---|---:|---:|---:|---|"]
        for row in g["rows"]:
            if row["kind"] == "baseline":
                same = {k: dict(row[k], n=1) if row[k]["std"] == 0 else row[k] for k in ("score", "macro_f1")}  # deterministic: no ± 0
                lines.append(f"| {row['model']} | {_fmt(same['score'], True)} | {_fmt(same['macro_f1'], True)} | - | - |")
                continue
            seeds = ", ".join(map(str, row["seeds"]))
            if len(set(row["seeds"])) < len(row["seeds"]):
                seeds += " (a seed twice: other settings?)"
            flag = f" ⚠ one class in {row['one_class_runs']}/{len(row['seeds'])} runs" if row["one_class_runs"] else ""
            lines.append(f"| {row['model']}{flag} | {_fmt(row['score'], True)} | {_fmt(row['macro_f1'], True)} | "
                         f"{_fmt(row['runtime_s'], False)} | {seeds} |")
            if flag:
                notes.append(row["model"])
        lines.append("")
    if notes:
        lines += ["⚠ one class: the model predicted one class for more than 95% of the test set in that many runs "
                  "(see `warnings` in their results.json).", ""]
    speed = table["speed"]
    if speed["baseline"]:
        lines += [f"## Training speedup over {speed['baseline']}", "", f"| model | avg speedup vs {speed['baseline']} | datasets |",
                  "|---|---:|---:|"]
        for row in speed["rows"]:
            sp = row["speedup"]
            lines.append(f"| {row['model']} | {f'{sp:.2f}x' if sp else '-'} | {row['datasets']} |")
        lines.append("")
    devices = sorted({(r.get("device") or {}).get("gpu") or f"CPU ({(r.get('device') or {}).get('cpu', '?')})" for r in results})
    lines += [f"Device(s): {', '.join(devices)}. Runs: {len(results)}.", ""]
    lines += ["| model | task | dataset | seed | examples | steps | precision | samples/s | result file |",
              "|---|---|---|---:|---:|---:|---|---:|---|"]
    for r in results:
        lines.append(f"| {model_name(r)} | {r['task']} | {dataset_key(r)[1]} | {r.get('seed')} | {r.get('train_examples', '?')} | "
                     f"{r.get('steps', '?')} | {r.get('precision', '?')} | {r.get('samples_per_s', 0):.1f} | {r['_path']} |")
    return "\n".join(lines) + "\n"


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = table["groups"]
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, g in zip(axes[0], groups):
        for row in g["rows"]:
            y = row["score"]["mean"] * 100
            if row["kind"] == "baseline":
                ax.axhline(y, linestyle="--", color="grey", linewidth=1)
                ax.annotate(row["model"], (0, y), xycoords=("axes fraction", "data"), textcoords="offset points", xytext=(3, 3), fontsize=7)
                continue
            x = row["runtime_s"]["mean"]
            ax.errorbar(x, y, xerr=row["runtime_s"]["std"], yerr=row["score"]["std"] * 100, fmt="o", capsize=3)
            ax.annotate(row["model"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel("training runtime (s)")
        ax.set_ylabel(f"test {g['metric']} (%)")
        ax.set_title(f"{g['task']} / {g['dataset']}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(run_dirs: list[str], out: str | Path, baseline: str | None = None, overwrite: bool = False) -> Path:
    from ds_distil.core.rundir import claim

    results = collect(run_dirs)
    table = build_table(results, baseline)
    out = Path(out)
    md = render_markdown(table, results)
    # the report may sit inside a --runs directory (runs/ft/report), but not hold a result it reads
    with claim(out, "report", overwrite=overwrite, inputs=[*run_dirs, *(r["_path"] for r in results)], may_contain_out=run_dirs) as rd:
        (rd.path / "report.md").write_text(md)
        (rd.path / "report.json").write_text(json.dumps({"table": table, "results": results}, indent=1))
        plot(table, rd.path / "report.png")
        rd.commit()
    update_cards(table, results, out / "report.md")  # the cards of local ds-distil exports get their finetuning rows
    return out / "report.md"


def update_cards(table: dict, results: list[dict], report_path: str | Path) -> list[Path]:
    """From `ds-distil report`: add each local ds-distil export's rows of `table` to its card."""
    dirs: dict[str, Path] = {}
    for r in results:
        path = Path(r["model"])
        if path.is_dir() and (path / "ds_distil_export.json").is_file():
            dirs.setdefault(model_name(r), path)
    updated = []
    for name, path in dirs.items():
        rows = [{"task": g["task"], "dataset": g["dataset"], "metric": g["metric"], **row}
                for g in table["groups"] for row in g["rows"] if row["kind"] == "model" and row["model"] == name]
        if card.add_results(path, rows, source=str(report_path)):
            updated.append(path)
            log.info("model card %s: finetuning results added (%d task/dataset rows)", path / card.CARD, len(rows))
        else:
            log.info("%s has no ds-distil model card to add results to (`ds-distil export --run RUN_DIR` writes one)", path)
    return updated
