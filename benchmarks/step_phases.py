"""Where a training step's time goes, phase by phase: ours (the DeepSpeed engine as `ds-distil` builds it, one rank),
ours under the other ZeRO stage (on a CPU ZeRO-2, the one-rank default before `deepspeed.zero_stage: auto`; on a GPU
none) and the plain-PyTorch reference, on the same model and batches, in one process.

    python -m benchmarks.step_phases                                  # finetune and distil dBERT Tiny, quick sizes
    python -m benchmarks.step_phases --models dbert-tiny,dbert-base --profile

Phases (seconds per step, median over the timed steps of every round; device synchronised at each boundary):

* finetune: forward (with the loss), backward (with DeepSpeed's gradient reduction hooks), step (clipping, the
  non-finite check, the optimizer, the schedule, zeroing the gradients);
* distil: teacher (the frozen teacher's forward at the masked positions), student (its forward and the loss),
  backward, step; ours runs the pieces of `ds_distil.distill.step.DistillStep` one by one here.

Methods run in `--repeats` rounds, each in turn. `--profile` adds torch.profiler's operator tables of ours under
both stages (the operators by their own time over three steps): what the phases' differences are made of.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import (
    command_line,
    device_info,
    header,
    init_one_process,
    parse_or_measure,
    run_isolated,
    sync,
    versions,
    write_report,
)

DATA = Path(os.environ.get("DS_DISTIL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def methods(device) -> tuple[str, ...]:
    """ours (ZeRO stage auto), ours under the other stage (ZeRO-2 where auto runs none, one fp32 rank; none where auto
    keeps ZeRO-2, a GPU in bf16 or fp16: the lever a GPU has yet to measure) and the reference."""
    return ("ours-zero2" if device.type != "cuda" else "ours-zero0", "ours", "reference")


def stage_of(method: str) -> int | str:
    return int(method.removeprefix("ours-zero")) if method.startswith("ours-zero") else "auto"


def _phased(device, phases):
    """A step that runs `phases` ({name: fn(state) -> state}) in order, returning {name: seconds}."""
    def step(b):
        times, state = {}, b
        for name, fn in phases.items():
            sync(device)
            t0 = time.perf_counter()
            state = fn(state)
            sync(device)
            times[name] = time.perf_counter() - t0
        return times
    return step


def _finetune_steppers(spec, d):
    import torch

    from benchmarks.finetune_speed import _fixed_batches, ours_engine
    from benchmarks.reference import ReferenceFinetune
    from ds_distil.data.tasks import load_task
    from ds_distil.data.tokenizer import load_tokenizer
    from ds_distil.finetune.features import featurise
    from ds_distil.finetune.model import build_model

    tok = load_tokenizer(str(DATA / "mbert_tokenizer"))
    task = load_task("hatespeech", str(DATA / "hatespeech"))
    n = spec["steps"] + spec["warmup"]
    feats = featurise(task, "train", tok, spec["seq_len"], limit=spec["batch"] * n)
    batches = [{k: v.to(d.device) for k, v in b.items()} for b in _fixed_batches(feats, spec["batch"], spec["seq_len"], tok.pad_token_id, n)]
    steppers = {}
    for method in methods(d.device):
        torch.manual_seed(0)
        model = build_model(spec["model"], task, tok)
        if method == "reference":
            ref = ReferenceFinetune(model, "fp32" if d.device.type != "cuda" else "bf16", d.device, cuda_graph=False)
            phases = {"forward": ref.forward_loss, "backward": lambda loss: loss.backward(),
                      "step": lambda _, ref=ref: ref.update()}
            steppers[method] = (_phased(d.device, phases), None)
            continue
        engine = ours_engine(model, method, spec["batch"], n, d.device)
        phases = {"forward": lambda b, e=engine: e(**b).loss, "backward": lambda loss, e=engine: e.backward(loss),
                  "step": lambda _, e=engine: e.step()}
        steppers[method] = (_phased(d.device, phases), engine)
    return steppers, batches


def _distill_steppers(spec, d):
    import torch

    from benchmarks.reference import ReferenceDistill, bound_objective
    from benchmarks.throughput import VOCAB, make_batches
    from ds_distil.distill.setup import build_step
    from ds_distil.model.build import build_student, build_teacher
    from ds_distil.model.forward import MaskedLM
    from ds_distil.runtime import engine as eng
    from ds_distil.schema.distill import LossConfig, StudentConfig, TeacherConfig, TrainConfig

    batches = make_batches(3, spec["batch"], spec["seq_len"], d.device)
    steppers = {}
    teacher = eng.place_teacher(build_teacher(TeacherConfig(preset="mbert"), VOCAB, 0, 128), d.device, eng.teacher_dtype("auto", d.device))
    for method in methods(d.device):
        torch.manual_seed(0)
        student = build_student(StudentConfig(preset=spec["model"], dropout=0.1), VOCAB, 0, pad_multiple=128)
        objective = bound_objective(LossConfig(), teacher, student)
        if method == "reference":
            ref = ReferenceDistill(teacher, student, VOCAB, objective, "fp32" if d.device.type != "cuda" else "bf16", d.device, False)
            phases = {"teacher": lambda b, ref=ref: (b, ref.teacher_outputs(b["input_ids"], b["attention_mask"], b["positions"])),
                      "student": lambda bt, ref=ref: ref.student_loss(bt[0]["input_ids"], bt[0]["attention_mask"], bt[0]["positions"],
                                                                       bt[0]["targets"], bt[1]),
                      "backward": lambda loss: loss.backward(), "step": lambda _, ref=ref: ref.update()}
            steppers[method] = (_phased(d.device, phases), None)
            continue
        train = TrainConfig(micro_batch_size=spec["batch"], max_steps=100, lr=1e-4)
        ds = eng.ds_config_from(train, str(eng.DS_CONFIGS / "zero2-fp32.json") if d.device.type != "cuda" else eng.resolve_ds_json("auto", d.device),
                                1, 100, fused=True, stage=stage_of(method))
        engine = eng.initialize(MaskedLM(student, VOCAB), ds, 0.01)
        ds_step = build_step(engine, objective, teacher, VOCAB, 2.0, d.device, 1)

        def teacher_(raw, s=ds_step):  # DistillStep.__call__, piece by piece
            b, _, counts = s.prepare(raw)
            return b, counts, s.teacher(b)

        phases = {"teacher": teacher_, "student": lambda x, s=ds_step: s.student_loss(x[0], x[2], x[1])[0],
                  "backward": lambda loss, e=engine: e.backward(loss),
                  "step": lambda _, e=engine: e.step()}
        steppers[method] = (_phased(d.device, phases), engine)
    return steppers, batches


def measure(spec: dict) -> dict:
    d = init_one_process()
    steppers, batches = (_finetune_steppers if spec["step"] == "finetune" else _distill_steppers)(spec, d)
    for step, _ in steppers.values():
        for b in batches[: spec["warmup"]]:
            step(b)
    times = {m: [] for m in steppers}
    for _ in range(spec["repeats"]):
        for m, (step, _) in steppers.items():
            for i in range(spec["steps"]):
                times[m].append(step(batches[(spec["warmup"] + i) % len(batches)]))
    rows = []
    for m, ts in times.items():
        phases = {k: statistics.median(t[k] for t in ts) for k in ts[0]}
        rows.append({"method": m, "phases": phases, "total": statistics.median(sum(t.values()) for t in ts), "steps": len(ts)})
    out = {"rows": rows}
    if spec.get("profile"):
        from torch.profiler import ProfilerActivity, profile

        out["profiles"] = {}
        for m in methods(d.device)[:2]:
            step = steppers[m][0]
            with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if d.device.type == "cuda" else [])) as prof:
                for b in batches[:3]:
                    step(b)
            key = "self_cuda_time_total" if d.device.type == "cuda" else "self_cpu_time_total"
            out["profiles"][m] = prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=50)
    return out


def render(result: dict) -> str:
    c = result["config"]
    md = header("Where a step's time goes: ours under both ZeRO stages and the reference, phase by phase", result, result["command"])
    md += (f"Finetuning: Hatespeech batches of {c['finetune_batch']} x {c['finetune_len']}; distillation: mBERT-architecture teacher, "
           f"batches of {c['distill_batch']} x {c['distill_len']}, KD; precision auto (fp32 on CPU). {c['steps']} timed steps per round after "
           f"{c['warmup']} warm-up, {c['repeats']} rounds (methods in turn); median seconds per step of each phase and of the "
           f"whole step. Load average at the start {result['load_avg'][0]:.2f}.\n\n")
    for cell in result["cells"]:
        if "error" in cell:
            md += f"\n{cell['step']} {cell['model']}: failed: {cell['error']}\n"
            continue
        rows = cell["rows"]
        names = list(rows[0]["phases"])
        ref = next(r for r in rows if r["method"] == "reference")
        md += f"\n### {cell['step']} {cell['model']}\n\n| method | " + " | ".join(names) + " | total | / reference |\n"
        md += "|---|" + "---:|" * (len(names) + 2) + "\n"
        for r in rows:
            md += (f"| {r['method']} | " + " | ".join(f"{r['phases'][k]:.4f}" for k in names)
                   + f" | {r['total']:.4f} | {r['total'] / ref['total']:.2f}x |\n")
        for m, table in cell.get("profiles", {}).items():
            md += f"\n<details><summary>torch.profiler, {m}, 3 steps</summary>\n\n```\n{table}\n```\n</details>\n"
    return md


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--models", default="dbert-tiny")
    p.add_argument("--steps-kinds", default="finetune,distill", help="finetune, distill or both")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    args = parse_or_measure(p, measure)
    if args is None:
        return
    config = {"models": args.models.split(","), "kinds": args.steps_kinds.split(","), "steps": args.steps, "warmup": args.warmup,
              "repeats": args.repeats, "finetune_batch": 16, "finetune_len": 64, "distill_batch": 8, "distill_len": 128}
    load = os.getloadavg()
    cells = []
    for kind in config["kinds"]:
        for model in config["models"]:
            batch, seq_len = (16, 64) if kind == "finetune" else (8, 128)
            spec = {"step": kind, "model": model, "batch": batch, "seq_len": seq_len, "steps": args.steps, "warmup": args.warmup,
                    "repeats": args.repeats, "profile": args.profile}
            got = run_isolated("benchmarks.step_phases", spec)
            cells.append({"step": kind, "model": model, **got})
            print(f"{kind} {model}: " + ("failed: " + got["error"] if "error" in got else
                                         ", ".join(f"{r['method']} {r['total']:.4f} s" for r in got["rows"])), flush=True)
    if all("error" in c for c in cells):
        print("step_phases: every configuration failed", file=sys.stderr)
        sys.exit(1)
    result = {"what": "step_phases", "date": datetime.date.today().isoformat(), "device": device_info(), "versions": versions(),
              "command": command_line("benchmarks.step_phases"), "config": config, "cells": cells, "load_avg": list(load)}
    md = render(result)
    paths = write_report("step_phases", result, md, Path(args.out))
    print(md)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
