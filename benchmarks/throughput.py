"""Distillation throughput: our step against a straightforward one and against the best a careful
engineer writes by hand, same models, same inputs, same run.

    python -m benchmarks.throughput                 # quick: this CPU, batch 8 x 128, both students
    python -m benchmarks.throughput --full          # a GPU: seq 128, batches 128 and 256
    python -m benchmarks.throughput --full --levers # and each speed lever of ours turned off in turn
    python -m benchmarks.throughput --profile       # and a torch.profiler table of our step
    python -m benchmarks.throughput --objectives kd,tinybert,minilmv2  # ours and the reference per objective

Teacher: the mBERT architecture (12 x 768, vocabulary 119,547), random weights (speed does not
depend on them). Students: dBERT Tiny and dBERT Base. Three methods:

* ours: `ds_distil.distill.step.DistillStep` (built by `distill.setup.build_step` with the KD objective
  and the live teacher), the loop's own micro step, under a single-rank
  DeepSpeed engine with the run defaults (ZeRO stage auto: none on one rank in fp32, ZeRO-2
  otherwise; precision auto, padded vocabulary, fused AdamW, torch.compile where `perf.compile`
  auto turns it on), reading its statistics once per step as the trainer does. `--levers` adds it
  under ZeRO-2 ("ZeRO-2 on one rank", the one-rank default before).
* reference: `benchmarks.reference.ReferenceDistill`, plain PyTorch with every lever (autocast,
  padded vocabulary, masked-only heads, fused AdamW, no host sync, torch.compile on the same
  devices as ours): what we must come close to.
* baseline: what a straightforward implementation does: teacher in fp32, unpadded vocabulary,
  full-vocabulary logits at every position for both models, KL over all tokens, under the same
  DeepSpeed engine.

With `--objectives kd,tinybert,minilmv2` (default: kd alone), ours and the reference run once per
distillation objective (ds_distil/distill/objectives; LossConfig defaults, minilmv2 with 12 relation
heads, which divide 312, 768 and the teacher's 768), our step with that objective bound and, where it
has parameters of its own (TinyBERT's projection), the student wrapped as `StudentWithObjective` so
the engine trains them; the report adds a table per student of each objective's step time against
kd's (same method). The baseline, ours-trimmed and the levers run with kd only.

With `--cached`, ours-cached: our step distilling from a teacher cache (teacher.cache): no teacher in the process,
the batches carrying K = 16 sampled targets per masked slot as the stream delivers them (drawn here from random
logits over the vocabulary: the step's cost does not depend on their values), KD's KL the sampled estimate. The
report sets it against ours with the live teacher (step time, tokens/s, peak memory) and gives the cache's bytes per
sample and per masked slot (its record layout, ds_distil/data/teacher_cache.py). With `--vocab` too, ours-trimmed-cached
(the same over the target-language vocabulary, against ours-trimmed). And cache-build: the builder's own work per batch
(ds_distil/distill/cache_build.targets: the teacher's forward at the masked slots and the draws) timed as a step at
cache.batch_size, set against a live distillation epoch of each student (both per sample).

With `--vocab VOCAB_DIR`, a fourth, ours-trimmed: our step with the student over that
target-language vocabulary (teacher head and KL over its tokens; inputs drawn from its tokens).

Each configuration runs in a fresh process (so peak memory is its own). Warm-up steps (compilation
included) are excluded; the timed steps run back to back, the device synchronised at both ends
only; inputs cycle over several differently masked batches. MFU counts the FLOPs of
ds_distil.runtime.flops (LM heads at the masked positions, real vocabulary) for every method, so it
compares useful work per second.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import command_line, device_info, header, parse_or_measure, run_isolated, sync, versions, write_report

VOCAB = 119547
# --levers: ours with one lever turned off (or changed) at a time
LEVERS = {"no padding": {"pad": 1}, "no compile": {"compile": False}, "unfused AdamW": {"fused": False},
          "fp16": {"precision": "fp16"}, "ZeRO-2 on one rank": {"zero_stage": 2}}
# --objectives: what each objective changes from LossConfig's defaults for these students (12 divides 312 and 768)
OBJECTIVE_LOSS = {"minilmv2": {"relation_heads": 12}}
OURS_AND_REFERENCE = ("ours", "reference")  # the methods every objective runs; the others run with kd only


def make_batches(n: int, batch: int, seq_len: int, device, ordinary=None, vocab: int = VOCAB) -> list[dict]:
    """Random ordinary tokens (from `ordinary`: default every one of mBERT's) between [CLS] and [SEP],
    masked as the stream masks them."""
    import torch

    from ds_distil.data.masking import mask_tokens, max_masked_per_sample, static_positions
    from ds_distil.schema.distill import DataConfig

    cfg = DataConfig(shards="-")
    special = torch.tensor([0, 100, 101, 102, 103])
    ordinary = torch.arange(106, vocab) if ordinary is None else ordinary
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        ids = ordinary[torch.randint(len(ordinary), (batch, seq_len), generator=g)]
        ids[:, 0], ids[:, -1] = 101, 102
        b = mask_tokens(ids, special, ordinary, 103, cfg, g)
        b["attention_mask"] = torch.ones_like(ids)
        b["index"] = torch.arange(batch)
        b["positions"], b["targets"] = static_positions(b["labels"], max_masked_per_sample(seq_len, cfg.mlm_probability))
        out.append({k: v.to(device) for k, v in b.items()})
    return out


CACHE_K = 16  # the teacher cache's defaults (cache.k, cache.batch_size)
CACHE_BATCH = 32


def add_cached_targets(batches: list[dict], vocab: int, k: int, temperature: float) -> None:
    """Each batch's masked slots get K sampled targets, as a teacher cache's stream gives them (empty slots: weight 0)."""
    import torch

    from ds_distil.distill.sparse_targets import sampled

    for i, b in enumerate(batches):
        g = torch.Generator().manual_seed(1000 + i)
        logits = torch.randn(len(b["positions"]), vocab, generator=g) * 3
        t = sampled(logits, k, temperature, generator=g)
        empty = (b["targets"] == -100).cpu()
        device = b["positions"].device
        b["teacher_ids"] = t.ids.masked_fill(empty[:, None], 0).to(device)
        b["teacher_weights"] = t.weights.masked_fill(empty[:, None], 0.0).to(device)
        b["teacher_entropy"] = t.entropy.masked_fill(empty, 0.0).to(device)


def measure(spec: dict) -> dict:
    """One configuration, in this process: {student, method, seq_len, batch, steps, warmup, inputs, precision,
    compile, pad, fused, profile, objective (default kd), loss (LossConfig fields other than the defaults)}; the
    tests also give teacher (a preset, default mbert) and vocab_size (default mBERT's) for small models."""
    import torch
    import torch.nn.functional as F

    from benchmarks.reference import ReferenceDistill, bound_objective
    from ds_distil.runtime.losses import kl_sum
    from ds_distil.distill.setup import StudentWithObjective, build_step
    from ds_distil.model.build import build_student, build_teacher
    from ds_distil.model.forward import MaskedLM
    from ds_distil.runtime.engine import DS_CONFIGS, ds_config_from, init_distributed, initialize, place_teacher, teacher_dtype
    from ds_distil.runtime.flops import Arch, distill_step_flops, peak_flops
    from ds_distil.schema.distill import LossConfig, StudentConfig, TeacherConfig, TrainConfig

    if spec["method"] == "cache-build":
        return _measure_build(spec)
    d = init_distributed()  # a single process: on a port the OS finds free
    device, method, precision = d.device, spec["method"], spec["precision"]
    cached = method in ("ours-cached", "ours-trimmed-cached")
    vocab, t_preset, objective_name = spec.get("vocab_size", VOCAB), spec.get("teacher", "mbert"), spec.get("objective", "kd")
    if method not in ("ours", "reference") and objective_name != "kd":
        raise ValueError(f"method {method} runs with the kd objective only, not {objective_name}")
    torch.manual_seed(0)
    pad = spec["pad"] if method != "baseline" else 1
    s_vocab, s_pad, trimmed, ordinary = vocab, 0, None, None
    if method in ("ours-trimmed", "ours-trimmed-cached"):  # the student over a target-language vocabulary (ds-distil vocab)
        from ds_distil.data.vocab import load_vocab_map
        from ds_distil.model.surgery import prepare_trimmed_run

        vmap = load_vocab_map(spec["vocab"])
        teacher = None if cached else build_teacher(TeacherConfig(preset=t_preset), vocab, 0, 1)
        trimmed = prepare_trimmed_run(vmap, teacher, 0, 100, pad)
        s_vocab, s_pad = trimmed.vocab, trimmed.pad_id
        ordinary = torch.from_numpy(vmap.kept[vmap.kept >= 106])
    elif cached:  # no teacher in the process: its sampled targets come with the batches
        teacher = None
    else:
        teacher = build_teacher(TeacherConfig(preset=t_preset), vocab, 0, pad)
    student = build_student(StudentConfig(preset=spec["student"], dropout=0.1), s_vocab, s_pad, pad_multiple=pad)
    if cached:
        from ds_distil.distill import objectives
        from ds_distil.model.build import bert_config

        objective = objectives.KD(LossConfig())
        objective.bind(bert_config(t_preset, vocab, 0), student.config)
    t_dtype = teacher_dtype("auto", device) if method != "baseline" else torch.float32
    teacher = place_teacher(teacher, device, t_dtype)
    if trimmed is not None and trimmed.full_head is not None:
        trimmed.full_head.to(device=device, dtype=t_dtype)
    loss_cfg = LossConfig(objective=objective_name, **spec.get("loss", {}))
    if not cached:
        objective = bound_objective(loss_cfg, teacher, student)  # may build its own parameters (a projection)
    batches = make_batches(spec["inputs"], spec["batch"], spec["seq_len"], device, ordinary, vocab)
    if cached:
        add_cached_targets(batches, s_vocab, spec.get("cache_k", CACHE_K), loss_cfg.temperature)
    student_arch, teacher_arch = Arch.of(student, s_vocab), (Arch.of(teacher, s_vocab) if teacher is not None else None)

    def engine():
        train = TrainConfig(micro_batch_size=spec["batch"], max_steps=spec["steps"] + spec["warmup"], lr=1e-4)
        ds = ds_config_from(train, str(DS_CONFIGS / f"zero2-{precision}.json"), 1, train.max_steps, fused=spec["fused"],
                            stage=spec.get("zero_stage", "auto"))
        if method != "baseline" and objective.module is not None:  # as setup.py: the engine trains the objective's parameters
            return initialize(StudentWithObjective(student, s_vocab, objective.module), ds, 0.01)
        return initialize(MaskedLM(student, None if method == "baseline" else s_vocab), ds, 0.01)

    if method in ("ours", "ours-trimmed", "ours-cached", "ours-trimmed-cached"):
        micro_step = build_step(engine(), objective, teacher, s_vocab, loss_cfg.temperature, device, 1, trimmed, spec["compile"],
                                cached=cached)

        def step(b):
            return micro_step(b).cpu()[0]  # the trainer's one read per optimizer step; [0]: the total loss
    elif method == "reference":
        step = ReferenceDistill(teacher, student, vocab, objective, precision, device, spec["compile"]).step
    else:
        ds_engine = engine()

        def step(b):
            with torch.no_grad():
                t_full = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
            labels = b["labels"].view(-1)
            s_full = ds_engine(b["input_ids"], b["attention_mask"], torch.arange(labels.numel(), device=device)).logits
            kl = kl_sum(s_full, t_full.view(-1, vocab), loss_cfg.temperature) / labels.numel()
            mlm = F.cross_entropy(s_full.float(), labels, ignore_index=-100)
            loss = loss_cfg.a_kl * loss_cfg.temperature**2 * kl + loss_cfg.a_mlm * mlm
            ds_engine.backward(loss)
            ds_engine.step()
            return loss.detach()

    # the objective's own parameters as the step starts (the engine has cast them): the timed steps must change them
    own = [p.detach().float().cpu().clone() for p in objective.module.parameters()] if objective.module is not None else []
    step_s, last = _timed(step, batches, spec, device)
    trained = [not torch.equal(a, p.detach().float().cpu()) for a, p in zip(own, objective.module.parameters())] if own else []

    masked = sum(int((b["targets"] != -100).sum()) for b in batches) / len(batches)
    flops = distill_step_flops(student_arch, teacher_arch, spec["batch"], spec["seq_len"], masked)
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = peak_flops(gpu_name)
    out = {**spec, "step_s": step_s, "tokens_per_s": spec["batch"] * spec["seq_len"] / step_s, "samples_per_s": spec["batch"] / step_s,
           "masked_per_step": masked, "step_flops": flops, "achieved_tflops": flops / step_s / 1e12,
           "mfu": flops / step_s / peak if peak else None, "teacher_dtype": str(t_dtype).removeprefix("torch."),
           "objective": objective.name, "last_loss": float(last), "objective_params": sum(p.numel() for p in objective.module.parameters())
           if objective.module is not None else 0, "objective_params_trained": all(trained) if trained else None}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["memory_kind"] = "GPU max_memory_allocated"
    else:
        out["peak_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        out["memory_kind"] = "CPU peak RSS"
    if spec.get("profile"):
        out["profile"] = _profile(step, batches, device)
    return out


def _timed(step, batches: list[dict], spec: dict, device) -> tuple[float, object]:
    """(mean seconds per step over spec["steps"] steps run back to back after spec["warmup"], the last step's value)."""
    import torch

    for i in range(spec["warmup"]):
        step(batches[i % len(batches)])
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(spec["steps"]):
        last = step(batches[i % len(batches)])
    sync(device)
    return (time.perf_counter() - t0) / spec["steps"], last


def _measure_build(spec: dict) -> dict:
    """cache-build: what `ds-distil teacher-cache` does per batch (distill/cache_build.targets: the teacher's forward at
    the real masked slots, then K draws from its softmax at T), timed as a step; no student, no file writing."""
    import torch

    from ds_distil.distill.cache_build import targets
    from ds_distil.model.build import build_teacher
    from ds_distil.model.forward import MaskedLM
    from ds_distil.runtime.engine import init_distributed, place_teacher, teacher_dtype
    from ds_distil.schema.cache import SamplingConfig
    from ds_distil.schema.distill import TeacherConfig

    device = init_distributed().device
    torch.manual_seed(0)
    vocab = spec.get("vocab_size", VOCAB)
    t_dtype = teacher_dtype("auto", device)
    lm = MaskedLM(place_teacher(build_teacher(TeacherConfig(preset=spec.get("teacher", "mbert")), vocab, 0, 1), device, t_dtype), vocab)
    sampling = SamplingConfig(k=spec["cache_k"], batch_size=spec["batch"])
    batches = make_batches(spec["inputs"], spec["batch"], spec["seq_len"], device, None, vocab)
    g = torch.Generator(device=device).manual_seed(0)

    def step(b):
        t = targets(lm, b["input_ids"], b["attention_mask"], b["positions"][b["targets"] != -100], sampling, g)
        return t.weights.sum().cpu()

    step_s, _ = _timed(step, batches, spec, device)
    out = {**spec, "step_s": step_s, "tokens_per_s": spec["batch"] * spec["seq_len"] / step_s, "samples_per_s": spec["batch"] / step_s,
           "teacher_dtype": str(t_dtype).removeprefix("torch."), "objective": "kd"}
    if device.type == "cuda":
        out["peak_memory_gib"], out["memory_kind"] = torch.cuda.max_memory_allocated(device) / 2**30, "GPU max_memory_allocated"
    else:
        out["peak_memory_gib"], out["memory_kind"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "CPU peak RSS"
    return out


def _profile(step, batches, device, steps: int = 3) -> str:
    """torch.profiler over a few more steps: the operators by their own time, device time first on a GPU."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(batches[i % len(batches)])
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"{steps} steps\n" + prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=60)


def render(result: dict) -> str:
    md = header("Distillation throughput: ours against the reference and a straightforward step", result, result["command"])
    c = result["config"]
    md += (f"Teacher: mBERT architecture (12 x 768, vocab {VOCAB:,}), random weights. Precision {c['precision']}; torch.compile "
           f"{'on' if c['compile'] else 'off'} for ours and the reference. Mean step time over {c['steps']} timed steps run back to "
           f"back after {c['warmup']} warm-up steps, {c['inputs']} input sets. Memory: {result['rows'][0].get('memory_kind', '?')}."
           + (f" Each configuration ran {c['repeats']} times, round-robin, each time in a fresh process; the run of median step "
              "time is reported." if c.get("repeats", 1) > 1 else "") + "\n\n"
           "- ours: the trainer's micro step (DeepSpeed, run defaults: ZeRO stage auto, i.e. none on one rank in fp32); reference: plain PyTorch with every lever "
           "(benchmarks/reference.py); baseline: fp32 teacher, unpadded vocabulary, full logits at every position.\n\n")
    md += _load_note(result)
    objectives = c.get("objectives", ["kd"])
    if objectives != ["kd"]:
        md += "The table below is the kd objective's; each objective's step follows it.\n\n"
    md += ("| student | seq | batch | method | teacher dtype | step s | tokens/s | samples/s | TFLOP/s | MFU | peak mem GiB "
           "| ours/reference | ours/baseline |\n|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    kd_rows = [r for r in result["rows"] if r.get("objective", "kd") == "kd" and r["method"] != "cache-build"]
    by_key = {(r["student"], r["seq_len"], r["batch"], r["method"]): r for r in kd_rows if not r.get("lever")}

    def ratio(r, other):
        """r's tokens/s over other's; with repeats, the median of the runs' ratios (paired by round) and their range."""
        o = by_key.get((r["student"], r["seq_len"], r["batch"], other))
        if not o or "error" in o:
            return ""
        if "step_s_runs" not in r or "step_s_runs" not in o:
            return f"{r['tokens_per_s'] / o['tokens_per_s']:.2f}x"
        ratios = sorted(b / a for a, b in zip(r["step_s_runs"], o["step_s_runs"]))  # same batch: tokens/s ratio = inverse time ratio
        return f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"

    for r in kd_rows:
        name = r["method"] + (f" ({r['lever']})" if r.get("lever") else "")
        if "error" in r:
            md += f"| {r['student']} | {r['seq_len']} | {r['batch']} | {name} | failed: {r['error']} |\n"
            continue
        ours = r["method"] == "ours" and not r.get("lever")
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
        md += (f"| {r['student']} | {r['seq_len']} | {r['batch']} | {name} | {r['teacher_dtype']} | {r['step_s']:.4f} "
               f"| {r['tokens_per_s']:,.0f} | {r['samples_per_s']:.1f} | {r['achieved_tflops']:.2f} | {mfu} | {r['peak_memory_gib']:.2f} "
               f"| {ratio(r, 'reference') if ours else ''} | {ratio(r, 'baseline') if ours else ''} |\n")
    trimmed = [r for r in result["rows"] if r["method"] == "ours-trimmed" and "error" not in r]
    if trimmed:
        md += (f"\nours-trimmed: the student over the target-language vocabulary {result['config'].get('vocab')} (the teacher's "
               "head and the KL over its tokens; FLOPs counted with its size). Against ours over the full vocabulary:\n\n")
        for r in trimmed:
            md += f"- {r['student']} seq {r['seq_len']} batch {r['batch']}: {ratio(r, 'ours') or 'n/a'} the tokens/s\n"
    cached = [r for r in result["rows"] if r["method"] in ("ours-cached", "ours-trimmed-cached") and "error" not in r]
    if cached:
        from ds_distil.data.masking import max_masked_per_sample
        from ds_distil.data.teacher_cache import record_dtype

        k = result["config"].get("cache_k", CACHE_K)
        md += (f"\nours-cached: our step from a teacher cache (K = {k} sampled targets per masked slot, no teacher in the "
               "process; TFLOP/s counts the student's FLOPs only). Against ours with the live teacher, same student, inputs "
               "and run:\n\n| student | seq | batch | step s live | step s cached | tokens/s cached / live | peak mem GiB live "
               "| peak mem GiB cached | cache bytes per sample | per masked slot |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
        for r in cached:
            live_method = "ours-trimmed" if r["method"] == "ours-trimmed-cached" else "ours"
            live = by_key.get((r["student"], r["seq_len"], r["batch"], live_method))
            slots = max_masked_per_sample(r["seq_len"], 0.15)
            size = record_dtype(slots, k).itemsize
            name = r["student"] + (" (trimmed vocabulary)" if live_method == "ours-trimmed" else "")
            md += (f"| {name} | {r['seq_len']} | {r['batch']} | {live['step_s']:.4f} | {r['step_s']:.4f} | "
                   f"{ratio(r, live_method)} | {live['peak_memory_gib']:.2f} | {r['peak_memory_gib']:.2f} | {size:,} | {size / slots:.0f} |\n"
                   if live and "error" not in live else f"| {name} | {r['seq_len']} | {r['batch']} | (no live row) |\n")
        md += _build_section(result, by_key)
    if not result["device"]["gpu"]:
        md += "\nCPU figures: MFU is not reported (no peak FLOP/s is known for this CPU).\n"
    if objectives != ["kd"]:
        md += _objectives_section(result)
    levers = [r for r in result["rows"] if r.get("lever") and "error" not in r]
    if levers:
        md += "\nEach lever's effect: tokens/s of ours with everything on, divided by ours with that lever off (or changed).\n\n"
        md += "| student | seq | batch | lever | tokens/s without it | effect |\n|---|---:|---:|---|---:|---:|\n"
        for r in levers:
            full = by_key.get((r["student"], r["seq_len"], r["batch"], "ours"))
            if full and "error" not in full:
                md += (f"| {r['student']} | {r['seq_len']} | {r['batch']} | {r['lever']} | {r['tokens_per_s']:,.0f} "
                       f"| {full['tokens_per_s'] / r['tokens_per_s']:.2f}x |\n")
    for r in result["rows"]:
        if r.get("profile"):
            md += f"\n<details><summary>torch.profiler: {r['student']} seq {r['seq_len']} batch {r['batch']} {r['method']}</summary>\n\n"
            md += "```\n" + r["profile"] + "\n```\n</details>\n"
    return md


def _build_section(result: dict, by_key: dict) -> str:
    """The cache's build against live distillation, per sample: the build's teacher work for one mask copy of an epoch
    against one live epoch of each student (both scale with the epoch's samples, so the ratio is the epochs')."""
    builds = list({r["seq_len"]: r for r in result["rows"] if r["method"] == "cache-build" and "error" not in r}.values())
    if not builds:
        return ""
    md = ("\ncache-build: what `ds-distil teacher-cache` does per batch (ds_distil/distill/cache_build.targets: the teacher's "
          "forward at the masked slots, then the draws; no file writing), timed as a step at its default batch "
          f"(cache.batch_size {CACHE_BATCH}). Building one mask copy of an epoch costs, against one live distillation epoch "
          "of the same samples (the build drawing over the full vocabulary; a trimmed cache's draws, over its kept tokens, "
          "cost a little less):\n\n| seq | build s per sample | build samples/s | student | live s per sample | build / live epoch |\n"
          "|---:|---:|---:|---|---:|---:|\n")
    for b in builds:
        per = b["step_s"] / b["batch"]
        for (student, seq, batch, method), live in by_key.items():
            if seq == b["seq_len"] and method in ("ours", "ours-trimmed") and "error" not in live:
                live_per = live["step_s"] / batch
                md += (f"| {seq} | {per:.4f} | {1 / per:.1f} | {student}{' (trimmed)' if method == 'ours-trimmed' else ''} "
                       f"| {live_per:.4f} | {per / live_per:.2f} |\n")
    return md


def median_run(runs: list[dict]) -> dict:
    """Of one configuration's runs, the one of median step time (the lower middle one of an even count), with every
    run's step time beside it; a configuration that failed in any run is reported as failed."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r["step_s"])
    middle = ordered[(len(ordered) - 1) // 2]
    return {**middle, "step_s_runs": [r["step_s"] for r in runs]} if len(runs) > 1 else middle


def _load_note(result: dict) -> str:
    """The machine's load averages at the start and the end of the run: how much other work shared its cores."""
    load, cores = result.get("load_avg"), result["device"].get("cpu_cores")
    if not load:
        return ""
    text = (f"Machine load (1-, 5-, 15-minute averages): {', '.join(f'{x:.1f}' for x in load['start'])} at the start, "
            f"{', '.join(f'{x:.1f}' for x in load['end'])} at the end, on {cores} cores.")
    if cores and max(load["start"][0], load["end"][0]) > cores:
        text += (" Other jobs shared the cores during this run: absolute times are inflated and noisier than on an idle "
                 "machine; compare the rows of this run with each other.")
    return text + "\n\n"


def _objectives_section(result: dict) -> str:
    """Per student (and sequence length, batch): each objective's step, ours and the reference, against kd's."""
    c, rows = result["config"], result["rows"]
    overrides = c.get("objective_loss") or {name: OBJECTIVE_LOSS.get(name, {}) for name in c["objectives"]}
    changed = "; ".join(f"{name}: {', '.join(f'{k}={v}' for k, v in loss.items())}" for name, loss in overrides.items() if loss)
    md = ("\n## Per objective\n\nOurs and the reference with each objective (ds_distil/distill/objectives), LossConfig defaults"
          + (f" except {changed}" if changed else "") + "; same models, inputs and run. `step / kd's`: the row's step time over "
          "kd's for the same student and method (what the objective's extra terms cost); `ours/reference`: tokens/s of ours "
          "over the reference's, same objective. The FLOP counts (TFLOP/s, MFU) cover the KD step only and are left out "
          "here. Last loss: the total of the last timed step.\n")
    key = {(r["student"], r["seq_len"], r["batch"], r.get("objective", "kd"), r["method"]): r for r in rows
           if not r.get("lever") and "error" not in r}
    shapes = list(dict.fromkeys((r["student"], r["seq_len"], r["batch"]) for r in rows))
    for student, seq, batch in shapes:
        repeats = c.get("repeats", 1) > 1
        md += (f"\n### {student}, seq {seq}, batch {batch}\n\n| objective | method | step s | tokens/s | peak mem GiB "
               "| last loss | step / kd's | ours/reference |" + (" step s of each run |" if repeats else "")
               + "\n|---|---|---:|---:|---:|---:|---:|---:|" + ("---|" if repeats else "") + "\n")
        ratios = []
        for objective in c["objectives"]:
            for method in OURS_AND_REFERENCE:
                r = next((r for r in rows if (r["student"], r["seq_len"], r["batch"], r.get("objective", "kd"), r["method"])
                          == (student, seq, batch, objective, method) and not r.get("lever")), None)
                if r is None:
                    continue
                if "error" in r:
                    md += f"| {objective} | {method} | failed: {r['error']} |\n"
                    continue
                kd = key.get((student, seq, batch, "kd", method))
                vs_kd = f"{r['step_s'] / kd['step_s']:.2f}x" if kd else ""
                if kd and objective != "kd":
                    ratios.append(f"{objective}/kd {method} {vs_kd}")
                ref = key.get((student, seq, batch, objective, "reference")) if method == "ours" else None
                vs_ref = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else ""
                last = r.get("last_loss")
                loss = f"{last:.4f}" if isinstance(last, float) and math.isfinite(last) else str(last if last is not None else "")
                md += (f"| {objective} | {method} | {r['step_s']:.4f} | {r['tokens_per_s']:,.0f} | {r['peak_memory_gib']:.2f} | {loss} "
                       f"| {vs_kd} | {vs_ref} |" + (f" {', '.join(f'{x:.2f}' for x in r.get('step_s_runs', []))} |" if repeats else "")
                       + "\n")
        if ratios:
            md += "\nStep time against kd's, same method: " + "; ".join(ratios) + ".\n"
    return md


def plot(result: dict, path: Path) -> None:
    """tokens/s against micro-batch size, one line per student, method and sequence length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    rows = [r for r in result["rows"] if "error" not in r and not r.get("lever") and r["method"] != "cache-build"]
    style = {"ours": "o-", "reference": "s:", "baseline": "x--", "ours-trimmed": "d-.", "ours-cached": "^-", "ours-trimmed-cached": "v-."}
    for key in sorted({(r["student"], r["method"], r["seq_len"], r.get("objective", "kd")) for r in rows}):
        pts = sorted((r["batch"], r["tokens_per_s"]) for r in rows
                     if (r["student"], r["method"], r["seq_len"], r.get("objective", "kd")) == key)
        name = f"{key[0]} {key[1]} L={key[2]}" + (f" {key[3]}" if key[3] != "kd" else "")
        ax.plot([b for b, _ in pts], [t for _, t in pts], style[key[1]], label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("micro batch size")
    ax.set_ylabel("tokens/s (one device)")
    ax.set_title(f"Distillation throughput, {result['device']['gpu'] or 'CPU'}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--full", action="store_true", help="real sizes for a GPU: batches 128 and 256 (seq 128)")
    p.add_argument("--students", default="dbert-tiny,dbert-base", help="student presets, comma-separated")
    p.add_argument("--methods", default="ours,reference,baseline")
    p.add_argument("--seq-lens", default=None)
    p.add_argument("--batches", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--inputs", type=int, default=3)
    p.add_argument("--precision", default="auto", help="auto (bf16 where the device has it natively, else fp16 on a GPU, fp32 on a CPU), bf16, fp16, fp32")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="torch.compile for ours and the reference "
                   "(auto: on for CUDA, as perf.compile)")
    p.add_argument("--levers", action="store_true", help="also run ours with each speed lever turned off in turn")
    p.add_argument("--profile", action="store_true", help="add a torch.profiler table of ours")
    p.add_argument("--cached", action="store_true", help="add ours-cached: our step from a teacher cache (no teacher "
                   "in the process), against ours with the live teacher")
    p.add_argument("--vocab", default=None, help="a target-language vocabulary (ds-distil vocab): adds ours-trimmed, our step "
                   "with the student over it")
    p.add_argument("--repeats", type=int, default=1, help="run every configuration this many times, round-robin, each in a "
                   "fresh process, and report the run of median step time (a machine shared with other jobs)")
    p.add_argument("--objectives", default="kd", help="distillation objectives (loss.objective), comma-separated, e.g. "
                   "kd,tinybert,minilmv2: ours and the reference run with each, the others with kd only; the report "
                   "compares each objective's step time with kd's (include kd)")
    args = parse_or_measure(p, measure)
    if args is None:
        return
    import torch

    from ds_distil.distill.objectives import OBJECTIVES
    from ds_distil.runtime.precision import auto_precision

    objective_names = args.objectives.split(",")
    unknown = [o for o in objective_names if o not in OBJECTIVES]
    if unknown:
        p.error(f"--objectives: unknown {', '.join(unknown)} (known: {', '.join(OBJECTIVES)})")
    load_start = os.getloadavg()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    seq_lens = [int(x) for x in (args.seq_lens or "128").split(",")]
    batches = [int(x) for x in (args.batches or ("128,256" if args.full else "8")).split(",")]
    steps = args.steps or (20 if args.full else 3)
    warmup = args.warmup or (5 if args.full else 1)
    precision = args.precision if args.precision != "auto" else auto_precision(device)
    compile_ = args.compile == "on" or (args.compile == "auto" and cuda)
    methods = args.methods.split(",")
    specs = []
    for s in args.students.split(","):
        for L in seq_lens:
            for b in batches:
                base = {"student": s, "seq_len": L, "batch": b, "steps": steps, "warmup": warmup, "inputs": args.inputs,
                        "precision": precision, "compile": compile_, "pad": 128, "fused": True}
                for name in objective_names:
                    runs = methods if name == "kd" else [m for m in methods if m in OURS_AND_REFERENCE]
                    specs += [{**base, "objective": name, "loss": OBJECTIVE_LOSS.get(name, {}), "method": m,
                               "profile": args.profile and m == "ours"} for m in runs]
                base = {**base, "objective": "kd", "loss": {}}  # the trimmed student and the levers: kd
                if args.cached:
                    specs.append({**base, "method": "ours-cached", "cache_k": CACHE_K, "profile": args.profile})
                if args.vocab:
                    specs.append({**base, "method": "ours-trimmed", "vocab": str(Path(args.vocab).resolve())})
                if args.vocab and args.cached:
                    specs.append({**base, "method": "ours-trimmed-cached", "vocab": str(Path(args.vocab).resolve()), "cache_k": CACHE_K,
                                  "profile": args.profile})
                if args.levers:
                    specs += [{**base, "method": "ours", "lever": name, **change} for name, change in LEVERS.items()
                              if {**base, **change} != base and not (name == "fp16" and not cuda)]
    if args.cached:  # the cache's build: the teacher alone, at the builder's default batch (cache.batch_size)
        for L in seq_lens:
            specs.append({"student": "teacher", "seq_len": L, "batch": CACHE_BATCH, "steps": steps, "warmup": warmup,
                          "inputs": args.inputs, "precision": precision, "method": "cache-build", "cache_k": CACHE_K})
    runs: list[list[dict]] = [[] for _ in specs]
    for repeat in range(args.repeats):  # round-robin: a change in the machine's load falls on every configuration alike
        for spec, done in zip(specs, runs):
            done.append(run_isolated("benchmarks.throughput", spec))
            r = done[-1]
            name = (f"{r['student']} seq {r['seq_len']} batch {r['batch']} {r['method']}" + (f" ({r['lever']})" if r.get("lever") else "")
                    + (f" [{r['objective']}]" if r.get("objective", "kd") != "kd" else "") + (f" run {repeat + 1}" if args.repeats > 1 else ""))
            print(f"{name}: " + (f"{r['step_s']:.4f} s/step, {r['tokens_per_s']:,.0f} tokens/s, peak {r['peak_memory_gib']:.2f} GiB"
                                 if "error" not in r else f"failed: {r['error']}"), flush=True)
    rows = [median_run(done) for done in runs]
    if all("error" in r for r in rows):
        print("throughput: every configuration failed; no report written", file=sys.stderr)
        sys.exit(1)
    mode = (("objectives-" if objective_names != ["kd"] else "") + ("cached-" if args.cached else "") + ("full" if args.full else "quick")
            + ("-levers" if args.levers else ""))
    result = {"what": "throughput", "mode": mode, "date": datetime.date.today().isoformat(), "device": device_info(),
              "versions": versions(), "command": command_line("benchmarks.throughput"),
              "config": {"students": args.students.split(","), "methods": methods, "seq_lens": seq_lens, "batches": batches,
                         "steps": steps, "warmup": warmup, "inputs": args.inputs, "precision": precision, "compile": compile_,
                         "levers": args.levers, "vocab": args.vocab, "cached": args.cached, "cache_k": CACHE_K, "objectives": objective_names, "repeats": args.repeats,
                         "objective_loss": {o: OBJECTIVE_LOSS.get(o, {}) for o in objective_names}},
              "load_avg": {"start": list(load_start), "end": list(os.getloadavg())}, "rows": rows}
    md = render(result)
    paths = write_report(f"throughput-{mode}", result, md, Path(args.out))
    plot(result, paths[0].with_suffix(".png"))
    print(md)
    print("wrote", *paths, paths[0].with_suffix(".png"))


if __name__ == "__main__":
    main()
