"""Evaluation speed of `ds-distil finetune`: rows per second of its prediction pass, against the pass it had before
and against a plain PyTorch inference loop on the same model.

    python -m benchmarks.eval_speed                       # dBERT Tiny on Hatespeech's validation and test rows
    python -m benchmarks.eval_speed --model dbert-base --batches 64,256

Methods, on the same model (random weights: speed does not depend on them), rows and tokenisation (the task's
max_length):

* before: the prediction pass up to this benchmark's commit: rows in file order (DistributedSampler, no shuffle),
  each batch padded to its longest row, `torch.no_grad`, through the DeepSpeed engine's forward;
* ours: `ds_distil.finetune.inference.predict`: rows longest first in batches of neighbours in length, inference mode,
  the model called directly;
* plain: what a careful engineer writes by hand for one process: the model in eval mode under `torch.inference_mode`,
  rows sorted by length, each batch padded to its longest row, argmax, nothing else.

The methods run in `--repeats` rounds, each in turn, in one process; rows/s is the median round's. Every method's
predictions are compared with plain's (they must be the same classes).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import command_line, device_info, header, init_one_process, parse_or_measure, run_isolated, versions, write_report

DATA = Path(os.environ.get("DS_DISTIL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _before(engine, feats, batch_size, pad_id, device) -> dict:
    """The prediction pass as it was (one process)."""
    import torch
    from torch.utils.data import DataLoader

    from ds_distil.finetune.features import collate

    engine.eval()
    out = {}
    with torch.no_grad():
        for batch in DataLoader(feats, batch_size=batch_size, shuffle=False, collate_fn=collate(pad_id)):
            index = batch.pop("index")
            batch.pop("labels")
            pred = engine(**{k: v.to(device) for k, v in batch.items()}).logits.argmax(-1).cpu()
            for i, row, m in zip(index.tolist(), pred, batch["attention_mask"]):
                out[i] = row[: int(m.sum())].tolist() if pred.dim() == 2 else int(row)
    engine.train()
    return out


def _plain(model, feats, batch_size, pad_id, device) -> dict:
    """A plain inference loop: sorted by length, inference mode, the model itself."""
    import torch

    from ds_distil.finetune.features import collate

    order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))
    fn, out = collate(pad_id), {}
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = fn([feats[i] for i in order[start:start + batch_size]])
            index, _ = batch.pop("index"), batch.pop("labels")
            pred = model(**{k: v.to(device) for k, v in batch.items()}).logits.argmax(-1)
            out.update(zip(index.tolist(), pred.tolist()))
    model.train()
    return out


def measure(spec: dict) -> dict:
    import torch

    from ds_distil.data.tasks import load_task
    from ds_distil.data.tokenizer import load_tokenizer
    from ds_distil.finetune.features import featurise
    from ds_distil.finetune.inference import predict
    from ds_distil.finetune.model import build_model
    from ds_distil.runtime import engine as eng
    from ds_distil.schema.distill import TrainConfig

    d = init_one_process()
    tok = load_tokenizer(str(DATA / "mbert_tokenizer"))
    task = load_task(spec["task"], str(DATA / spec["task"]))
    feats = [dict(f, index=i) for i, f in enumerate(f for s in ("valid", "test") for f in featurise(task, s, tok, spec["max_length"]))]
    torch.manual_seed(0)
    model = build_model(spec["model"], task, tok)
    train = TrainConfig(micro_batch_size=8, max_steps=1)
    engine = eng.initialize(model, eng.ds_config_from(train, eng.resolve_ds_json("auto", d.device), 1, 1), 0.0)
    pad = tok.pad_token_id
    methods = {"before": lambda b: _before(engine, feats, b, pad, d.device), "ours": lambda b: predict(engine, feats, b, pad, d, "eval"),
               "plain": lambda b: _plain(engine.module, feats, b, pad, d.device)}
    rows, same = [], True
    for b in spec["batches"]:
        times = {m: [] for m in methods}
        reference = methods["plain"](b)  # warm-up, and the predictions the others must give
        for m in ("before", "ours"):
            same = same and methods[m](b) == reference
        for _ in range(spec["repeats"]):
            for m, fn in methods.items():
                t0 = time.perf_counter()
                fn(b)
                times[m].append(time.perf_counter() - t0)
        rows += [{"method": m, "batch": b, "rows": len(feats), "seconds": statistics.median(t), "seconds_rounds": t,
                  "rows_per_s": len(feats) / statistics.median(t)} for m, t in times.items()]
    tokens = [len(f["input_ids"]) for f in feats]
    return {"rows": rows, "same_predictions": same, "examples": len(feats), "mean_tokens": statistics.fmean(tokens),
            "max_tokens": max(tokens), "precision": eng.precision(engine.config)}


def render(result: dict) -> str:
    c, r = result["config"], result["measured"]
    md = header("Evaluation speed: the finetune prediction pass, before and now, against a plain inference loop", result,
                result["command"])
    md += (f"{c['model']} (random weights) on {c['task']}'s validation and test rows ({r['examples']:,} rows, {r['mean_tokens']:.1f} "
           f"tokens on average, longest {r['max_tokens']}, max_length {c['max_length']}), {r['precision']}, one process; "
           f"median of {c['repeats']} rounds (each method in turn). Same predictions as plain's for every method: "
           f"{'yes' if r['same_predictions'] else 'NO'}.\n\n")
    md += "| batch | method | seconds | rows/s | / before | / plain |\n|---:|---|---:|---:|---:|---:|\n"
    by = {(x["batch"], x["method"]): x for x in r["rows"]}
    for x in r["rows"]:
        before, plain = by[(x["batch"], "before")], by[(x["batch"], "plain")]
        md += (f"| {x['batch']} | {x['method']} | {x['seconds']:.2f} | {x['rows_per_s']:,.0f} | {x['rows_per_s'] / before['rows_per_s']:.2f}x "
               f"| {x['rows_per_s'] / plain['rows_per_s']:.2f}x |\n")
    return md


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--model", default="dbert-tiny")
    p.add_argument("--task", default="hatespeech", choices=["hatespeech"], help="a sequence task under DS_DISTIL_DATA")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batches", default="64,256", help="evaluation batch sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    args = parse_or_measure(p, measure)
    if args is None:
        return
    config = {"model": args.model, "task": args.task, "max_length": args.max_length,
              "batches": [int(b) for b in args.batches.split(",")], "repeats": args.repeats}
    measured = run_isolated("benchmarks.eval_speed", config)
    if "error" in measured:
        print(f"eval_speed failed: {measured['error']}", file=sys.stderr)
        sys.exit(1)
    result = {"what": "eval_speed", "date": datetime.date.today().isoformat(), "device": device_info(), "versions": versions(),
              "command": command_line("benchmarks.eval_speed"), "config": config, "measured": measured, "load_avg": list(os.getloadavg())}
    md = render(result)
    paths = write_report("eval_speed", result, md, Path(args.out))
    print(md)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
