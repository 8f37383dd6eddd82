"""Finetuning speed of the students against the mBERT and DistilmBERT architectures, in the paper's
form, and of our finetuning step against the best a careful engineer writes by hand.

    python -m benchmarks.finetune_speed            # quick: this CPU, short sequences, a few steps
    python -m benchmarks.finetune_speed --full     # real sizes (batch 32 x 128, 50 steps), for a GPU

Same task data, batch, sequence length and number of steps for every architecture; random
weights (speed does not depend on them). Three task shapes: sequence classification (Hatespeech
Filipino), token classification (UD Tagalog POS) and sentence pairs (NewsPH-NLI-style pairs built
from the Filipino news articles). Two methods on identical batches (padded to the maximum length):

* ours: the training step of `ds-distil finetune` (its DeepSpeed engine and config: precision
  auto, fused AdamW, ZeRO stage auto: none for one rank in fp32); `--methods ...,ours-zero2` adds
  it under ZeRO-2 (the one-rank default before), `ours-zero0` without ZeRO (on a GPU);
* reference: `benchmarks.reference.ReferenceFinetune`, plain PyTorch, fused AdamW, autocast, and
  on CUDA the whole step captured in a CUDA graph.

Speedup = time(mBERT) / time(model) for ours, per task and averaged; ours/reference per cell.
Warm-up steps excluded, device synchronised, median step time. One fresh process per model (all
its tasks and methods), which keeps `--full` within minutes; in it the methods' models sit side by
side and their timed steps run in `--repeats` rounds, each method in turn, so that a change in the
machine's load falls on every method alike: ours/reference is the median of the rounds' ratios,
with their range.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import command_line, device_info, header, init_one_process, parse_or_measure, run_isolated, versions, write_report

DATA = Path(os.environ.get("DS_DISTIL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MODELS = ("mbert", "distilmbert", "dbert-base", "dbert-tiny", "tagalog-roberta")
TRIMMED = "-trimmed"  # --vocab DIR adds dbert-base-trimmed and dbert-tiny-trimmed: the students over that vocabulary
TASKS = ("hatespeech", "pos", "nli")
NOTES = {
    "distilmbert": "DistilmBERT's size (6 x 768, mBERT vocabulary) built as a BERT",
    "tagalog-roberta": "RoBERTa-base architecture (12 x 768, 514 positions); its own BPE vocabulary is not reachable offline, "
                       "so its embedding table has the mBERT tokenizer's 119,547 rows: where the optimizer update of that table "
                       "is a large part of the step (on a CPU), its time is overstated",
    "dbert-base": "the same architecture as distilmbert here (6 x 768, mBERT vocabulary): a difference between the two rows "
                  "is run-to-run noise of the machine, a measure of how far the other figures can be trusted",
    "dbert-base-trimmed": "dBERT Base over the target-language vocabulary given with --vocab (its tokenizer for the inputs too)",
    "dbert-tiny-trimmed": "dBERT Tiny over the target-language vocabulary given with --vocab",
}


def _fixed_batches(feats: list[dict], batch: int, max_length: int, pad_id: int, n: int) -> list[dict]:
    """n batches of exactly batch x max_length (the finetune collate, then padded on to max_length)."""
    import torch

    from ds_distil.finetune.features import collate

    fn = collate(pad_id)
    out = []
    for i in range(n):
        items = [feats[(i * batch + j) % len(feats)] for j in range(batch)]
        b = fn(items)
        b.pop("index")
        extra = max_length - b["input_ids"].shape[1]
        for k, v in b.items():
            if v.dim() == 2 and extra > 0:
                fill = pad_id if k == "input_ids" else (-100 if k == "labels" else 0)
                b[k] = torch.nn.functional.pad(v, (0, extra), value=fill)
        out.append(b)
    return out


def ours_engine(model, method: str, batch: int, steps: int, device):
    """`ds-distil finetune`'s DeepSpeed engine for `model` (one rank, precision auto, fused AdamW); method `ours` takes
    the ZeRO stage auto, `ours-zeroN` stage N."""
    from ds_distil.runtime import engine as eng
    from ds_distil.schema.distill import TrainConfig

    train = TrainConfig(micro_batch_size=batch, max_steps=steps, lr=5e-5)
    ds = eng.ds_config_from(train, eng.resolve_ds_json("auto", device), 1, steps, fused=eng.fused_adamw("auto", device),
                            stage=int(method.removeprefix("ours-zero")) if method != "ours" else "auto")
    return eng.initialize(model, ds, 0.01)


def measure(spec: dict) -> dict:
    """One model on every task of spec, both methods: {"rows": [...]}."""
    import torch

    from benchmarks.reference import ReferenceFinetune
    from ds_distil.data.tasks import load_task
    from ds_distil.data.tokenizer import load_tokenizer
    from ds_distil.finetune.features import featurise
    from ds_distil.finetune.model import build_model
    from ds_distil.runtime import engine as eng
    from ds_distil.runtime.precision import auto_precision

    d = init_one_process()
    dev = d.device
    trimmed = spec["model"].endswith(TRIMMED)
    tok = load_tokenizer(spec["vocab"] if trimmed else str(DATA / "mbert_tokenizer"))
    n = spec["steps"] + spec["warmup"]
    rows = []

    def timed(step, batches) -> list[float]:
        times = []
        for b in batches:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            step(b)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t0)
        return times

    def stepper(method: str, model):
        """(step function, precision) of one method on `model`."""
        if method == "ours" or method.startswith("ours-zero"):
            engine = ours_engine(model, method, spec["batch"], n, dev)

            def step(b):
                loss = engine(**b).loss
                engine.backward(loss)
                engine.step()
            return step, eng.precision(engine.config)
        ref = ReferenceFinetune(model, auto_precision(dev), dev)  # what `ours` resolves `auto` to

        return ref.step, "fp32" if ref.amp is None else str(ref.amp).removeprefix("torch.")

    for task_name, data_dir in spec["tasks"].items():
        task = load_task(task_name, data_dir)
        feats = featurise(task, "train", tok, spec["max_length"], limit=spec["batch"] * n)
        batches = [{k: v.to(dev) for k, v in b.items()} for b in _fixed_batches(feats, spec["batch"], spec["max_length"], tok.pad_token_id, n)]
        cells = {}
        for method in spec["methods"]:  # every method's model and optimizer side by side, so that their rounds interleave
            torch.manual_seed(0)
            model = build_model(spec["model"].removesuffix(TRIMMED), task, tok)  # the embedding table: len(tok) rows
            row = {"model": spec["model"], "task": task_name, "method": method, "params": sum(p.numel() for p in model.parameters())}
            try:
                step, row["precision"] = stepper(method, model)
                timed(step, batches[: spec["warmup"]])
                cells[method] = (row, step, [])
            except Exception as e:  # one failed cell must not hide the others
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                cells[method] = (row, None, [])
        # rounds: each method's timed steps in turn, so a change in the machine's load falls on every method alike
        for _ in range(spec["repeats"]):
            for method, (row, step, rounds) in cells.items():
                if step is None or "error" in row:
                    continue
                try:
                    rounds.append(timed(step, batches[spec["warmup"]:]))
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        for row, step, rounds in cells.values():
            if "error" not in row:
                row.update(step_s=statistics.median(t for r in rounds for t in r), round_step_s=[statistics.median(r) for r in rounds],
                           timed_steps=sum(len(r) for r in rounds), tokens_per_step=statistics.fmean(int(b["attention_mask"].sum()) for b in batches))
            rows.append(row)
        del cells
    return {"rows": rows}


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


def round_ratio(a: dict, b: dict) -> str:
    """a's step time over b's: the median of the rounds' ratios, with their range."""
    ratios = sorted(x / y for x, y in zip(a.get("round_step_s", [a["step_s"]]), b.get("round_step_s", [b["step_s"]])))
    spread = f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
    return f"{statistics.median(ratios):.2f}x{spread}"


def render(result: dict) -> str:
    c = result["config"]
    md = header("Finetuning speed against mBERT, and ours against the reference", result, result["command"])
    ours_rows = [r for r in result["rows"] if r.get("method", "ours") == "ours" and "error" not in r]
    md += (f"Batch {c['batch']} x length {c['max_length']} (every batch padded to it), {c['steps']} timed steps after "
           f"{c['warmup']} warm-up steps, median step time; random weights; our precision "
           f"{ours_rows[0].get('precision', '?') if ours_rows else '?'}.\n\n")
    md += "| model | params (M) | " + " | ".join(f"{t} s/step | {t} speedup" for t in c["tasks"]) + " | average speedup |\n"
    md += "|---|---:|" + "---:|---:|" * len(c["tasks"]) + "---:|\n"
    by = {(r["model"], r["task"], r.get("method", "ours")): r for r in result["rows"]}
    for m in c["models"]:
        cells = []
        params = next((by[(m, t, "ours")]["params"] for t in c["tasks"] if (m, t, "ours") in by and "params" in by[(m, t, "ours")]), None)
        for t in c["tasks"]:
            r = by.get((m, t, "ours"))
            if not r or "error" in r:
                cells += ["failed" if r else "-", ""]
                continue
            sp = result["speedups"].get(m, {}).get(t)
            cells += [f"{r['step_s']:.4f}", f"{sp:.2f}x" if sp else "-"]
        avg = result["speedups"].get(m, {}).get("average")
        md += f"| {m} | {params / 1e6:.1f} | " + " | ".join(cells) + f" | {f'{avg:.2f}x' if avg else '-'} |\n" if params else f"| {m} | failed |\n"
    if "reference" in c.get("methods", []):
        stages = [x for x in c["methods"] if x.startswith("ours-zero")]
        md += ("\nOurs against the reference (plain PyTorch step, CUDA graph on a GPU), seconds per step (median of every timed step); "
               f"ours/ref above 1 means slower: the median of the {c.get('repeats', 1)} rounds' ratios, their range in brackets (each "
               "round times every method in turn on the same batches, in one process)"
               + ("; ours-zeroN: our step under ZeRO stage N in place of deepspeed.zero_stage=auto (ZeRO-2 was the one-rank "
                  "default before it)" if stages else "") + ":\n\n")
        cols = ["ours", "reference", "ours/ref"] + [x for st in stages for x in (st, st.removeprefix("ours-") + "/ref")]
        md += "| model | task | " + " | ".join(cols) + " |\n|---|---|" + "---:|" * len(cols) + "\n"
        for m in c["models"]:
            for t in c["tasks"]:
                r = by.get((m, t, "reference"))
                cells = []
                for method in ["ours", *stages]:
                    o = by.get((m, t, method))
                    ok_o, ok_r = o and "error" not in o, r and "error" not in r
                    cells += [f"{o['step_s']:.4f}" if ok_o else "failed"]
                    if method == "ours":
                        cells += [f"{r['step_s']:.4f}" if ok_r else (f"failed: {r['error']}" if r else "-")]
                    cells += [round_ratio(o, r) if ok_o and ok_r else ""]
                md += f"| {m} | {t} | " + " | ".join(cells) + " |\n"
    md += "\n" + "".join(f"- {m}: {note}\n" for m, note in NOTES.items() if m in c["models"])
    md += "\nThe paper reports finetuning speedups over mBERT of 1.97x (dBERT Base), 5.23x (dBERT Tiny) and 1.68x (DistilmBERT) on GPU.\n"
    if not result["device"]["gpu"]:
        md += "These are CPU figures, with short sequences and few steps (quick mode).\n"
    return md


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--full", action="store_true")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--methods", default="ours,reference", help="ours, reference, and ours-zeroN (our step under ZeRO stage "
                   "N: ours-zero2 was the one-rank default before deepspeed.zero_stage=auto)")
    p.add_argument("--repeats", type=int, default=3, help="rounds: each method's timed steps in turn, this many times")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--vocab", default=None, help="a target-language vocabulary (ds-distil vocab): adds dbert-base-trimmed and "
                   "dbert-tiny-trimmed rows, the students over it")
    args = parse_or_measure(p, measure)
    if args is None:
        return
    if args.vocab:
        from ds_distil.data.vocab import load_vocab_map

        load_vocab_map(args.vocab)  # a bad directory fails here, not in every cell
        args.models += "".join(f",{m}{TRIMMED}" for m in ("dbert-base", "dbert-tiny") if f"{m}{TRIMMED}" not in args.models)
    batch = args.batch or (32 if args.full else 16)
    max_length = args.max_length or (128 if args.full else 64)
    steps = args.steps or (50 if args.full else 4)
    warmup = args.warmup or (5 if args.full else 1)
    models, tasks, methods = args.models.split(","), args.tasks.split(","), args.methods.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {"hatespeech": str(DATA / "hatespeech"), "pos": str(DATA / "ud_pos")}
        if "nli" in tasks:
            dirs["nli"] = str(nli_dir(Path(tmp)))
        for m in models:
            spec = {"model": m, "tasks": {t: dirs[t] for t in tasks}, "methods": methods, "batch": batch, "max_length": max_length,
                    "steps": steps, "warmup": warmup, "vocab": args.vocab, "repeats": args.repeats}
            got = run_isolated("benchmarks.finetune_speed", spec)
            got_rows = got.get("rows") or [{"model": m, "task": t, "method": me, "error": got.get("error", "?")} for t in tasks for me in methods]
            rows += got_rows
            for r in got_rows:
                print(f"{r['task']} {m} {r['method']}: " + (f"{r['step_s']:.4f} s/step" if "error" not in r else f"failed: {r['error']}"), flush=True)
    if all("error" in r for r in rows):
        print("finetune_speed: every configuration failed; no report written", file=sys.stderr)
        sys.exit(1)
    by = {(r["model"], r["task"]): r for r in rows if "error" not in r and r["method"] == "ours"}
    speedups = {}
    for m in models:
        per = {t: by[("mbert", t)]["step_s"] / by[(m, t)]["step_s"] for t in tasks if (m, t) in by and ("mbert", t) in by}
        if per:
            per["average"] = statistics.fmean(per.values())
        speedups[m] = per
    mode = "full" if args.full else "quick"
    result = {"what": "finetune_speed", "mode": mode, "date": datetime.date.today().isoformat(), "device": device_info(),
              "versions": versions(), "command": command_line("benchmarks.finetune_speed"),
              "config": {"models": models, "tasks": tasks, "methods": methods, "batch": batch, "max_length": max_length, "steps": steps,
                         "warmup": warmup, "vocab": args.vocab, "repeats": args.repeats}, "rows": rows, "speedups": speedups}
    md = render(result)
    paths = write_report(f"finetune_speed-{mode}", result, md, Path(args.out))
    png = paths[0].with_suffix(".png")
    plot(result, png)
    print(md)
    print("wrote", *paths, png)


def nli_dir(tmp: Path) -> Path:
    from ds_distil.data.tasks import build_nli, read_articles, write_nli

    write_nli(build_nli(read_articles(DATA / "fakenews" / "full.csv"), seed=0), tmp / "nli")
    return tmp / "nli"


if __name__ == "__main__":
    main()
