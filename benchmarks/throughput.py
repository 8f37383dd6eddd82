"""Distillation throughput: our step against a straightforward one, same models, same inputs, same run.

    python -m benchmarks.throughput            # quick: this CPU, batch 8 x 128, both students
    python -m benchmarks.throughput --full     # real sizes for a GPU: seq 128 and 512, batches 8..64

Teacher: the mBERT architecture (12 x 768, vocabulary 119,547), random weights (speed does not
depend on them). Students: dBERT Tiny and dBERT Base. The student trains under a single-rank
DeepSpeed ZeRO-2 engine, as in `ds-distil distill`.

* ours: teacher in inference precision (fp16 on GPU, fp32 on CPU), LM heads of both models only
  at the masked positions, KL and MLM over the masked tokens (what ds_distil.trainer does).
* baseline: what a straightforward implementation does: teacher in fp32, full vocabulary logits
  at every position for both models, KL over all tokens, MLM over the masked ones.

Each configuration runs in a fresh process (so peak memory is its own): warm-up steps excluded,
the device synchronised around each phase, the median of the timed steps, inputs cycling over
several differently masked batches. MFU counts the FLOPs of ds_distil.flops (LM heads at masked
positions) for both methods, so it compares useful work per second.
"""

from __future__ import annotations

import argparse
import datetime
import resource
import statistics
import time
from pathlib import Path

from benchmarks.common import command_line, device_info, header, parse_or_measure, run_isolated, versions, write_report

VOCAB = 119547


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(spec: dict) -> dict:
    """One configuration, in this process: {student, method, seq_len, batch, steps, warmup, inputs}."""
    import os

    import torch
    import torch.nn.functional as F

    from ds_distil.config import DataConfig, LossConfig, StudentConfig, TeacherConfig
    from ds_distil.data.stream import mask_tokens
    from ds_distil.engine import init_distributed, initialize, place_teacher, teacher_dtype
    from ds_distil.flops import Arch, distill_step_flops, peak_flops
    from ds_distil.losses import distillation_losses, kl_sum
    from ds_distil.models import MaskedLM, build_student, build_teacher, masked_lm_forward

    os.environ.setdefault("MASTER_PORT", str(spec["port"]))
    d = init_distributed()
    cuda, device = d.device.type == "cuda", d.device
    ours = spec["method"] == "ours"
    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(preset="mbert"), VOCAB, 0)
    student = build_student(StudentConfig(preset=spec["student"], dropout=0.1), VOCAB, 0)
    t_dtype = teacher_dtype("auto", device) if ours else torch.float32
    teacher = place_teacher(teacher, device, t_dtype)
    precision = spec["precision"]
    ds_config = {
        "train_micro_batch_size_per_gpu": spec["batch"], "gradient_accumulation_steps": 1, "train_batch_size": spec["batch"],
        "gradient_clipping": 1.0, "steps_per_print": 10**9,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.01, "torch_adam": True}},
        "zero_optimization": {"stage": 2, "overlap_comm": cuda, "contiguous_gradients": True},
    }
    if precision == "fp16":
        ds_config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    elif precision == "bf16":
        ds_config["bf16"] = {"enabled": True}
    engine = initialize(MaskedLM(student), ds_config, 0.01)
    loss_cfg = LossConfig()
    data_cfg = DataConfig(shards="-")
    special = torch.tensor([0, 100, 101, 102, 103])
    ordinary = torch.arange(106, VOCAB)
    batches = []
    for i in range(spec["inputs"]):
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(106, VOCAB, (spec["batch"], spec["seq_len"]), generator=g)
        ids[:, 0] = 101
        ids[:, -1] = 102
        b = mask_tokens(ids, special, ordinary, 103, data_cfg, g)
        b["attention_mask"] = torch.ones_like(ids)
        batches.append({k: v.to(device) for k, v in b.items()})

    def step(b) -> dict:
        times = {}
        labels = b["labels"].view(-1)
        positions = (labels != -100).nonzero().squeeze(1)
        targets = labels[positions]
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            if ours:
                t_logits, _ = masked_lm_forward(teacher, b["input_ids"], b["attention_mask"], positions)
            else:
                t_full = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
        _sync(device)
        t1 = time.perf_counter()
        if ours:
            s_logits, _ = engine(b["input_ids"], b["attention_mask"], positions)
            loss = distillation_losses(loss_cfg, s_logits, targets, positions.numel(), t_logits)["total"]
        else:
            all_positions = torch.arange(labels.numel(), device=device)
            s_full, _ = engine(b["input_ids"], b["attention_mask"], all_positions)  # head at every position
            kl = kl_sum(s_full, t_full.view(-1, VOCAB), loss_cfg.temperature) / labels.numel()
            mlm = F.cross_entropy(s_full.float(), labels, ignore_index=-100)
            loss = loss_cfg.a_kl * loss_cfg.temperature**2 * kl + loss_cfg.a_mlm * mlm
        engine.backward(loss)
        _sync(device)
        t2 = time.perf_counter()
        engine.step()
        _sync(device)
        t3 = time.perf_counter()
        times.update(teacher_forward_s=t1 - t0, student_forward_backward_s=t2 - t1, optimizer_step_s=t3 - t2, step_s=t3 - t0,
                     masked=positions.numel())
        return times

    for i in range(spec["warmup"]):
        step(batches[i % len(batches)])
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    timed = [step(batches[i % len(batches)]) for i in range(spec["steps"])]
    med = {k: statistics.median(t[k] for t in timed) for k in timed[0]}
    tokens = spec["batch"] * spec["seq_len"]
    flops = distill_step_flops(Arch.of(student), Arch.of(teacher), spec["batch"], spec["seq_len"], med["masked"])
    gpu_name = torch.cuda.get_device_name(device) if cuda else None
    peak = peak_flops(gpu_name)
    out = {**spec, **med, "tokens_per_s": tokens / med["step_s"], "samples_per_s": spec["batch"] / med["step_s"],
           "step_flops": flops, "achieved_tflops": flops / med["step_s"] / 1e12,
           "mfu": flops / med["step_s"] / peak if peak else None, "teacher_dtype": str(t_dtype).removeprefix("torch.")}
    if cuda:
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["memory_kind"] = "GPU max_memory_allocated"
    else:
        out["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        out["memory_kind"] = "CPU peak RSS"
    return out


def render(result: dict) -> str:
    md = header("Distillation throughput: ours against a straightforward step", result, result["command"])
    c = result["config"]
    md += (f"Teacher: mBERT architecture (12 x 768, vocab {VOCAB:,}), random weights. Student precision {c['precision']}. "
           f"Median of {c['steps']} timed steps after {c['warmup']} warm-up steps, {c['inputs']} input sets. "
           f"Memory: {result['rows'][0].get('memory_kind', '?')}.\n\n")
    md += ("| student | seq | batch | method | teacher dtype | step s | teacher fwd s | student fwd+bwd s | optimizer s | tokens/s "
           "| samples/s | TFLOP/s | MFU | peak mem GiB | ours/baseline |\n|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    by_key = {(r["student"], r["seq_len"], r["batch"], r["method"]): r for r in result["rows"]}
    for r in result["rows"]:
        if "error" in r:
            md += f"| {r['student']} | {r['seq_len']} | {r['batch']} | {r['method']} | failed: {r['error']} |\n"
            continue
        base = by_key.get((r["student"], r["seq_len"], r["batch"], "baseline"))
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if r["method"] == "ours" and base and "error" not in base else ""
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
        md += (f"| {r['student']} | {r['seq_len']} | {r['batch']} | {r['method']} | {r['teacher_dtype']} | {r['step_s']:.3f} "
               f"| {r['teacher_forward_s']:.3f} | {r['student_forward_backward_s']:.3f} | {r['optimizer_step_s']:.3f} "
               f"| {r['tokens_per_s']:,.0f} | {r['samples_per_s']:.1f} | {r['achieved_tflops']:.2f} | {mfu} | {r['peak_memory_gib']:.2f} | {ratio} |\n")
    if not result["device"]["gpu"]:
        md += "\nCPU figures: MFU is not reported (no peak FLOP/s is known for this CPU).\n"
    return md


def plot(result: dict, path: Path) -> None:
    """tokens/s against micro-batch size, one line per student, method and sequence length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    rows = [r for r in result["rows"] if "error" not in r]
    for key in sorted({(r["student"], r["method"], r["seq_len"]) for r in rows}):
        pts = sorted((r["batch"], r["tokens_per_s"]) for r in rows if (r["student"], r["method"], r["seq_len"]) == key)
        ax.plot([b for b, _ in pts], [t for _, t in pts], "o-" if key[1] == "ours" else "x--", label=f"{key[0]} {key[1]} L={key[2]}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("micro batch size")
    ax.set_ylabel("tokens/s (one device)")
    ax.set_title(f"Distillation throughput, {result['device']['gpu'] or 'CPU'}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="real sizes: seq 128 and 512, batches 8-64 (for a GPU)")
    p.add_argument("--students", default="dbert-tiny,dbert-base")
    p.add_argument("--seq-lens", default=None)
    p.add_argument("--batches", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--inputs", type=int, default=3)
    p.add_argument("--precision", default=None, help="student precision: fp16 (GPU default), bf16, fp32 (CPU default)")
    args = parse_or_measure(p, measure)
    if args is None:
        return
    import torch

    cuda = torch.cuda.is_available()
    seq_lens = [int(x) for x in (args.seq_lens or ("128,512" if args.full else "128")).split(",")]
    batches = [int(x) for x in (args.batches or ("8,16,32,64" if args.full else "8")).split(",")]
    steps = args.steps or (10 if args.full else 3)
    warmup = args.warmup or (3 if args.full else 1)
    precision = args.precision or ("fp16" if cuda else "fp32")
    rows = []
    for i, (student, seq, batch, method) in enumerate(
        (s, L, b, m) for s in args.students.split(",") for L in seq_lens for b in batches for m in ("ours", "baseline")
    ):
        spec = {"student": student, "seq_len": seq, "batch": batch, "method": method, "steps": steps, "warmup": warmup,
                "inputs": args.inputs, "precision": precision, "port": 29400 + i}
        rows.append(run_isolated("benchmarks.throughput", spec))
        r = rows[-1]
        print(f"{student} seq {seq} batch {batch} {method}: " + (f"{r['step_s']:.3f} s/step, {r['tokens_per_s']:,.0f} tokens/s, "
              f"peak {r['peak_memory_gib']:.2f} GiB" if "error" not in r else f"failed: {r['error']}"), flush=True)
    mode = "full" if args.full else "quick"
    result = {"what": "throughput", "mode": mode, "date": datetime.date.today().isoformat(), "device": device_info(),
              "versions": versions(), "command": command_line("benchmarks.throughput"),
              "config": {"students": args.students.split(","), "seq_lens": seq_lens, "batches": batches, "steps": steps,
                         "warmup": warmup, "inputs": args.inputs, "precision": precision}, "rows": rows}
    md = render(result)
    paths = write_report(f"throughput-{mode}", result, md, Path(args.out))
    plot(result, paths[0].with_suffix(".png"))
    print(md)
    print("wrote", *paths, paths[0].with_suffix(".png"))


if __name__ == "__main__":
    main()
