"""Finetuning speed of the students against the mBERT and DistilmBERT architectures, in the paper's form.

    python -m benchmarks.finetune_speed            # quick: this CPU, short sequences, a few steps
    python -m benchmarks.finetune_speed --full     # real sizes (batch 32 x 128, 50 steps), for a GPU

Same task data, batch, sequence length and number of steps for every architecture; random
weights (speed does not depend on them); the training step of `ds-distil finetune` (DeepSpeed
engine, fp16 on GPU, fp32 on CPU). Three task shapes: sequence classification (Hatespeech
Filipino), token classification (UD Tagalog POS) and sentence pairs (NewsPH-NLI-style pairs built
from the Filipino news articles). Speedup = time(mBERT) / time(model), per task and averaged.
Warm-up steps excluded, device synchronised, median step time; each model in a fresh process.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import command_line, device_info, header, parse_or_measure, run_isolated, versions, write_report

DATA = Path(os.environ.get("DS_DISTIL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MODELS = ("mbert", "distilmbert", "dbert-base", "dbert-tiny", "tagalog-roberta")
TASKS = ("hatespeech", "pos", "nli")
NOTES = {
    "distilmbert": "DistilmBERT's size (6 x 768, mBERT vocabulary) built as a BERT",
    "tagalog-roberta": "RoBERTa-base architecture (12 x 768, 514 positions); its own BPE vocabulary is not reachable offline, "
                       "so its embedding table has the mBERT tokenizer's 119,547 rows: where the optimizer update of that table "
                       "is a large part of the step (on a CPU), its time is overstated",
    "dbert-base": "the same architecture as distilmbert here (6 x 768, mBERT vocabulary): a difference between the two rows "
                  "is run-to-run noise of the machine, a measure of how far the other figures can be trusted",
}


def measure(spec: dict) -> dict:
    import torch

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(spec["port"]))
    from torch.utils.data import DataLoader

    from ds_distil import engine as eng
    from ds_distil.config import TrainConfig
    from ds_distil.data.tasks import load_task
    from ds_distil.finetune import _ds_json, build_model, collate, featurise
    from ds_distil.tokenizer import load_tokenizer

    d = eng.init_distributed()
    task = load_task(spec["task"], spec["data_dir"])
    tok = load_tokenizer(str(DATA / "mbert_tokenizer"))
    torch.manual_seed(0)
    model = build_model(spec["model"], task, tok)
    n_params = sum(p.numel() for p in model.parameters())
    need = spec["batch"] * (spec["steps"] + spec["warmup"])
    feats = featurise(task, "train", tok, spec["max_length"], limit=need)
    while len(feats) < need:  # small sets cycle
        feats = feats + feats[: need - len(feats)]
    train = TrainConfig(micro_batch_size=spec["batch"], max_steps=spec["steps"] + spec["warmup"], lr=5e-5)
    ds = eng.ds_config_from(train, _ds_json("auto", d.device), 1, train.max_steps)
    engine = eng.initialize(model, ds, 0.01)
    loader = DataLoader(feats, batch_size=spec["batch"], shuffle=False, collate_fn=collate(tok.pad_token_id))
    times, tokens = [], []
    for i, batch in enumerate(loader):
        batch.pop("index")
        batch = {k: v.to(d.device) for k, v in batch.items()}
        if d.device.type == "cuda":
            torch.cuda.synchronize(d.device)
        t0 = time.perf_counter()
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        if d.device.type == "cuda":
            torch.cuda.synchronize(d.device)
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
            tokens.append(int(batch["attention_mask"].sum()))
    step = statistics.median(times)
    return {**spec, "step_s": step, "samples_per_s": spec["batch"] / step, "tokens_per_step": statistics.fmean(tokens),
            "params": n_params, "precision": eng.precision(ds), "timed_steps": len(times)}


def nli_dir(tmp: Path) -> Path:
    from ds_distil.data.tasks import build_nli, read_articles, write_nli

    write_nli(build_nli(read_articles(DATA / "fakenews" / "full.csv"), seed=0), tmp / "nli")
    return tmp / "nli"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in result["config"]["models"] if m != "mbert"]
    tasks = result["config"]["tasks"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / (len(tasks) + 1)
    for k, t in enumerate(tasks + ["average"]):
        values = [result["speedups"].get(m, {}).get(t) or 0 for m in models]
        ax.bar([i + k * width for i in range(len(models))], values, width, label=t)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks([i + width * len(tasks) / 2 for i in range(len(models))], models)
    ax.set_ylabel("speedup over mBERT (x)")
    ax.set_title(f"Finetuning speedup, {result['device']['gpu'] or 'CPU'}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(result: dict) -> str:
    c = result["config"]
    md = header("Finetuning speed against mBERT", result, result["command"])
    md += (f"Batch {c['batch']} x max length {c['max_length']}, {c['steps']} timed steps after {c['warmup']} warm-up steps, "
           f"median step time; random weights; student precision {result['rows'][0].get('precision', '?')}.\n\n")
    md += "| model | params (M) | " + " | ".join(f"{t} s/step | {t} speedup" for t in c["tasks"]) + " | average speedup |\n"
    md += "|---|---:|" + "---:|---:|" * len(c["tasks"]) + "---:|\n"
    by = {(r["model"], r["task"]): r for r in result["rows"]}
    for m in c["models"]:
        cells = []
        params = next((by[(m, t)]["params"] for t in c["tasks"] if (m, t) in by and "params" in by[(m, t)]), None)
        for t in c["tasks"]:
            r = by.get((m, t))
            if not r or "error" in r:
                cells += ["failed" if r else "-", ""]
                continue
            sp = result["speedups"].get(m, {}).get(t)
            cells += [f"{r['step_s']:.3f}", f"{sp:.2f}x" if sp else "-"]
        avg = result["speedups"].get(m, {}).get("average")
        md += f"| {m} | {params / 1e6:.1f} | " + " | ".join(cells) + f" | {f'{avg:.2f}x' if avg else '-'} |\n" if params else f"| {m} | failed |\n"
    md += "\n" + "".join(f"- {m}: {note}\n" for m, note in NOTES.items() if m in c["models"])
    md += "\nThe paper reports finetuning speedups over mBERT of 1.97x (dBERT Base), 5.23x (dBERT Tiny) and 1.68x (DistilmBERT) on GPU.\n"
    if not result["device"]["gpu"]:
        md += "These are CPU figures, with short sequences and few steps (quick mode).\n"
    return md


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    args = parse_or_measure(p, measure)
    if args is None:
        return
    batch = args.batch or (32 if args.full else 16)
    max_length = args.max_length or (128 if args.full else 64)
    steps = args.steps or (50 if args.full else 4)
    warmup = args.warmup or (5 if args.full else 1)
    models, tasks = args.models.split(","), args.tasks.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {"hatespeech": str(DATA / "hatespeech"), "pos": str(DATA / "ud_pos")}
        if "nli" in tasks:
            dirs["nli"] = str(nli_dir(Path(tmp)))
        for i, (t, m) in enumerate((t, m) for t in tasks for m in models):
            spec = {"model": m, "task": t, "data_dir": dirs[t], "batch": batch, "max_length": max_length, "steps": steps,
                    "warmup": warmup, "port": 29200 + i}
            rows.append(run_isolated("benchmarks.finetune_speed", spec))
            r = rows[-1]
            print(f"{t} {m}: " + (f"{r['step_s']:.3f} s/step" if "error" not in r else f"failed: {r['error']}"), flush=True)
    by = {(r["model"], r["task"]): r for r in rows if "error" not in r}
    speedups = {}
    for m in models:
        per = {t: by[("mbert", t)]["step_s"] / by[(m, t)]["step_s"] for t in tasks if (m, t) in by and ("mbert", t) in by}
        if per:
            per["average"] = statistics.fmean(per.values())
        speedups[m] = per
    mode = "full" if args.full else "quick"
    result = {"what": "finetune_speed", "mode": mode, "date": datetime.date.today().isoformat(), "device": device_info(),
              "versions": versions(), "command": command_line("benchmarks.finetune_speed"),
              "config": {"models": models, "tasks": tasks, "batch": batch, "max_length": max_length, "steps": steps, "warmup": warmup},
              "rows": rows, "speedups": speedups}
    md = render(result)
    paths = write_report(f"finetune_speed-{mode}", result, md, Path(args.out))
    png = paths[0].with_suffix(".png")
    plot(result, png)
    print(md)
    print("wrote", *paths, png)


if __name__ == "__main__":
    main()
