"""How many sampled targets per masked token a teacher cache needs (cache.k): the noise each K adds to the KD
gradient, the bias of a top-k cache of the same size, and the bytes they cost, measured on a real teacher's outputs.

    python -m benchmarks.cache_k --shards runs/cache-cpu/shards/f100 --teacher runs/objectives-cpu/teacher/student \\
        --student runs/objectives-cpu/students/student-2x128/student

For the held-out samples of the shards (masked as validation masks them, the masks of a cache's held-out copy), the
teacher's and the student's logits at the masked positions give the full KL's gradient with respect to the student's
tempered logits, G = p_S - p_T per position ([M, V]). For each K, `sparse_targets.sampled` is drawn `--repeats` times
and each draw's gradient (sum w) p_S - w is set against G:

* noise: sqrt(mean over draws of ||G_hat - G||^2) / ||G|| (Frobenius norms over all positions): the relative error of
  one step's KD gradient from the cache, were the batch these positions. Unbiased: the mean over draws tends to G.
* bias of the draws' mean: ||mean G_hat - G|| / ||G|| (shrinks as 1/sqrt(repeats) for an unbiased estimate);
* top-k: ||G_topk - G|| / ||G|| for the k most probable tokens, renormalised (`sparse_targets.top_k`): deterministic,
  so that is all bias, which no number of steps averages away;
* the KL estimate: the mean over positions of the sampled KL, its relative standard deviation over draws;
* bytes: a cache record's bytes per masked slot (ds_distil/data/teacher_cache.py's layout) and per 128-token sample
  at the shards' maximum masked slots.

The student and the teacher are whatever is given: with the CPU stand-in teacher (a 4x256 model that knows little
beyond token frequencies) the teacher's distributions are flatter than mBERT's, which makes the sampled estimate's
noise larger, not smaller, at a given K (its variance is (1 - sum p_T^2) / K per position).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
from pathlib import Path

from benchmarks.common import command_line, device_info, header, parse_or_measure, versions, write_report

KS = (1, 2, 4, 8, 16, 32, 64)


def measure(spec: dict) -> dict:
    import torch

    from ds_distil.data.manifest import load_manifest
    from ds_distil.data.stream import MLMStream
    from ds_distil.data.teacher_cache import record_dtype
    from ds_distil.distill.sparse_targets import sampled, top_k
    from ds_distil.model.build import build_teacher
    from ds_distil.model.forward import MaskedLM
    from ds_distil.schema.distill import DataConfig, TeacherConfig

    torch.manual_seed(0)
    manifest = load_manifest(spec["shards"])
    vocab, pad = int(manifest.tokenizer["vocab_size"]), int(manifest.tokenizer["pad_id"])
    cfg = DataConfig(shards=spec["shards"], num_workers=0, masking="static")
    stream = MLMStream(manifest, cfg, batch_size=16, split="val", rank=0, world_size=1, shuffle=False)

    def model(path):
        return MaskedLM(build_teacher(TeacherConfig(pretrained=path), vocab, pad, 1).eval(), vocab)

    teacher, student = model(spec["teacher"]), model(spec["student"])
    t_logits, s_logits, n = [], [], 0
    with torch.no_grad():
        for b in stream.epoch_batches():
            real = b["targets"] != -100
            t_logits.append(teacher(b["input_ids"], b["attention_mask"], b["positions"]).logits[real].float())
            s_logits.append(student(b["input_ids"], b["attention_mask"], b["positions"]).logits[real].float())
            n += int((b["index"] >= 0).sum())
            if n >= spec["samples"]:
                break
    t_logits, s_logits = torch.cat(t_logits), torch.cat(s_logits)
    temperature = spec["temperature"]
    p_t = torch.softmax(t_logits / temperature, -1)
    p_s = torch.softmax(s_logits / temperature, -1)
    full = p_s - p_t
    norm = full.norm()
    blank = (p_t - 1.0 / vocab).norm()  # the gradient of a student that predicts nothing yet (uniform), for scale
    kl = (p_t * (p_t.clamp_min(1e-30).log() - p_s.clamp_min(1e-30).log())).sum(-1).mean()
    log_ps = torch.log_softmax(s_logits / temperature, -1)

    def grad(t):
        w = torch.zeros_like(p_s).scatter_add_(1, t.ids, t.weights)
        return t.weights.sum(-1, keepdim=True) * p_s - w

    def kl_estimate(t):
        return (-(log_ps.gather(1, t.ids) * t.weights).sum(-1) - t.entropy).mean()

    rows = []
    g = torch.Generator().manual_seed(1)
    for k in spec["ks"]:
        sq, mean, kls = 0.0, torch.zeros_like(full), []
        for _ in range(spec["repeats"]):
            t = sampled(t_logits, k, temperature, generator=g)
            est = grad(t)
            sq += float((est - full).pow(2).sum())
            mean += est / spec["repeats"]
            kls.append(float(kl_estimate(t)))
        tk = top_k(t_logits, k, temperature)
        slot_bytes = record_dtype(1, k).itemsize
        kl_mean = sum(kls) / len(kls)
        kl_std = math.sqrt(sum((x - kl_mean) ** 2 for x in kls) / max(len(kls) - 1, 1))
        rows.append({"k": k, "noise": math.sqrt(sq / spec["repeats"]) / float(norm),
                     "noise_vs_blank": math.sqrt(sq / spec["repeats"]) / float(blank), "mean_bias": float((mean - full).norm() / norm),
                     "top_k_bias": float((grad(tk) - full).norm() / norm), "kl_estimate": kl_mean, "kl_rel_std": kl_std / float(kl),
                     "top_k_kl": float(kl_estimate(tk)), "bytes_per_slot": slot_bytes,
                     "bytes_per_sample": record_dtype(stream.max_masked, k).itemsize})
    effective = (1 - p_t.pow(2).sum(-1)).mean()
    return {**spec, "positions": len(t_logits), "samples_read": n, "vocab": vocab, "kl": float(kl), "max_masked": stream.max_masked,
            "teacher_entropy": float(-(p_t * p_t.clamp_min(1e-30).log()).sum(-1).mean()), "one_minus_sum_p2": float(effective),
            "top1_prob": float(p_t.max(-1).values.mean()), "rows": rows}


def render(result: dict) -> str:
    c = result["config"]
    r = result["result"]
    md = header("Teacher cache: how many sampled targets per masked token (cache.k)", result, result["command"])
    md += (f"Teacher `{c['teacher']}`, student `{c['student']}`, shards `{c['shards']}` (vocabulary {r['vocab']:,}); the first "
           f"{r['samples_read']} held-out samples, {r['positions']:,} masked positions (validation's masks), T = {c['temperature']}, "
           f"{c['repeats']} independent draws per K. The teacher at T: mean entropy {r['teacher_entropy']:.2f} nats, mean top-1 "
           f"probability {r['top1_prob']:.3f}, mean 1 - sum p^2 {r['one_minus_sum_p2']:.3f}; the exact KL(teacher || student) "
           f"{r['kl']:.4f} per position.\n\n"
           "noise: the relative error of one draw's KD gradient over these positions, sqrt(E||G_hat - G||^2) / ||G||; bias of the "
           "mean: ||mean of the draws' gradients - G|| / ||G|| (an unbiased estimate's shrinks as 1/sqrt(draws)); top-k bias: the "
           "same for a top-k cache of the same size (deterministic: all bias). KL rel. std: the relative standard deviation of the "
           "sampled KL estimate (the logged loss/kl) over draws. Bytes: a cache record's per masked slot, and per sample at "
           f"{r['max_masked']} slots.\n\n"
           "noise vs blank: the same error against the gradient a blank student (uniform prediction) gets, the scale at the start "
           "of distillation.\n\n"
           "| K | noise | noise vs blank | bias of the mean | top-k bias | KL estimate | KL rel. std | top-k KL | bytes per slot "
           "| bytes per sample |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for row in r["rows"]:
        md += (f"| {row['k']} | {row['noise']:.3f} | {row['noise_vs_blank']:.3f} | {row['mean_bias']:.3f} | {row['top_k_bias']:.3f} | {row['kl_estimate']:.4f} | "
               f"{row['kl_rel_std']:.3f} | {row['top_k_kl']:.4f} | {row['bytes_per_slot']} | {row['bytes_per_sample']:,} |\n")
    return md


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="prepared shards with a held-out split")
    p.add_argument("--teacher", required=True, help="the teacher: a local HF directory (or hub name)")
    p.add_argument("--student", required=True, help="a student whose gradient is measured (a distilled one, or any MLM)")
    p.add_argument("--samples", type=int, default=128, help="held-out samples to read")
    p.add_argument("--repeats", type=int, default=30, help="independent draws per K")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--ks", default=",".join(map(str, KS)))
    args = parse_or_measure(p, measure)
    if args is None:
        return
    spec = {"shards": args.shards, "teacher": args.teacher, "student": args.student, "samples": args.samples,
            "repeats": args.repeats, "temperature": args.temperature, "ks": [int(k) for k in args.ks.split(",")]}
    load_start = os.getloadavg()
    r = measure(spec)
    result = {"what": "cache_k", "date": datetime.date.today().isoformat(), "device": device_info(), "versions": versions(),
              "command": command_line("benchmarks.cache_k"), "config": spec, "load_avg": {"start": list(load_start),
                                                                                       "end": list(os.getloadavg())}, "result": r}
    md = render(result)
    paths = write_report("cache_k", result, md, Path(args.out))
    print(md)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
