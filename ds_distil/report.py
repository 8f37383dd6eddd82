"""`ds-distil report`: finetuning results -> the paper's Table 2 layout (Markdown, JSON, PNG).

Rows are models; per task the test score and the training runtime (mean and standard deviation
over seeds); the last column is the model's speedup over the baseline row (mBERT) averaged over
the tasks both have: mean over tasks of runtime(baseline) / runtime(model).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from ds_distil.errors import UserError

BASELINES = ("mbert", "bert-base-multilingual-cased")


def collect(run_dirs: list[str | Path]) -> list[dict]:
    results = []
    for d in map(Path, run_dirs):
        from ds_distil.rundir import STAGING_INFIX

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


def build_table(results: list[dict], baseline: str | None = None) -> dict:
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results:
        cells[(_label(r["model"]), r["task"])].append(r)
    models = sorted({m for m, _ in cells}, key=lambda m: (m not in BASELINES, m))
    tasks = sorted({t for _, t in cells})
    base = baseline or next((m for m in models if m in BASELINES), None)
    table = {"tasks": tasks, "baseline": base, "rows": []}
    for m in models:
        row = {"model": m, "tasks": {}}
        for t in tasks:
            runs = cells.get((m, t))
            if runs:
                row["tasks"][t] = {"metric": runs[0]["metric"], "score": _stats([r["score"] for r in runs]),
                                   "runtime_s": _stats([r["train_runtime_s"] for r in runs]), "seeds": sorted(r.get("seed") for r in runs)}
        if base and base != m:
            ratios = [table_runtime(cells, base, t) / row["tasks"][t]["runtime_s"]["mean"]
                      for t in tasks if t in row["tasks"] and (base, t) in cells]
            row["speedup"] = statistics.fmean(ratios) if ratios else None
        elif base == m:
            row["speedup"] = 1.0
        table["rows"].append(row)
    return table


def table_runtime(cells, model, task) -> float:
    return statistics.fmean(r["train_runtime_s"] for r in cells[(model, task)])


def _label(model: str) -> str:
    """A path's last components for readability (runs/demo/student/student -> demo/student/student)."""
    p = Path(model)
    return model if not p.is_absolute() and len(p.parts) <= 3 else "/".join(p.parts[-3:])


def _fmt(s: dict, pct: bool) -> str:
    mean, std = (s["mean"] * 100, s["std"] * 100) if pct else (s["mean"], s["std"])
    return f"{mean:.2f} ± {std:.2f}" if s["n"] > 1 else f"{mean:.2f}"


def render_markdown(table: dict, results: list[dict]) -> str:
    tasks = table["tasks"]
    head = "| model | " + " | ".join(f"{t} score | {t} runtime (s)" for t in tasks) + f" | avg speedup vs {table['baseline'] or '-'} |"
    lines = ["# Finetuning: score and training runtime per model and task", "",
             "Scores are test-set percentages (accuracy; NER: entity-level F1 with seqeval), mean ± standard deviation "
             "over seeds where there are several; runtime is the training loop only, in seconds.", "", head,
             "|---|" + "---:|---:|" * len(tasks) + "---:|"]
    for row in table["rows"]:
        cells = []
        for t in tasks:
            c = row["tasks"].get(t)
            cells += [_fmt(c["score"], True), _fmt(c["runtime_s"], False)] if c else ["-", "-"]
        sp = row.get("speedup")
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {f'{sp:.2f}x' if sp else '-'} |")
    devices = sorted({(r.get("device") or {}).get("gpu") or f"CPU ({(r.get('device') or {}).get('cpu', '?')})" for r in results})
    lines += ["", f"Device(s): {', '.join(devices)}. Runs: {len(results)}.", ""]
    lines += ["| model | task | seed | examples | steps | precision | samples/s | result file |", "|---|---|---:|---:|---:|---|---:|---|"]
    for r in results:
        lines.append(f"| {_label(r['model'])} | {r['task']} | {r.get('seed')} | {r.get('train_examples', '?')} | {r.get('steps', '?')} "
                     f"| {r.get('precision', '?')} | {r.get('samples_per_s', 0):.1f} | {r['_path']} |")
    return "\n".join(lines) + "\n"


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = table["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        for row in table["rows"]:
            c = row["tasks"].get(t)
            if not c:
                continue
            x, y = c["runtime_s"]["mean"], c["score"]["mean"] * 100
            ax.errorbar(x, y, xerr=c["runtime_s"]["std"], yerr=c["score"]["std"] * 100, fmt="o", capsize=3)
            ax.annotate(row["model"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xlabel("training runtime (s)")
        ax.set_ylabel("test score (%)")
        ax.set_title(t)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(run_dirs: list[str], out: str | Path, baseline: str | None = None, overwrite: bool = False) -> Path:
    from ds_distil.rundir import claim

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
    return out / "report.md"
