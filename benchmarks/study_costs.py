"""What one step of each kind of study stage costs on this machine: the pieces the studies'
`estimates` (configs/studies/*.yaml) are built from.

    python -m benchmarks.study_costs                    # the pieces of paper-tl-cpu and the demo
    python -m benchmarks.study_costs --only finetune    # one kind

Kinds: `mlm` (the teacher's pretraining step: MLM only, no teacher), `distill` (a student against a
frozen teacher), `finetune` (a sequence-classification step at batch 32) and `eval` (a forward
pass of 64 examples). Each is our own code path (DistillStep under a one-rank DeepSpeed engine, the
finetuning engine of ds_distil.finetune.train), random weights (speed does not depend on them), inputs of
the real shape. Besides the wall time per step, the **process CPU time** per step is reported: on
a machine shared with other jobs the wall time grows with the load while the CPU time of the
process barely does; the CPU time divided by the threads the step keeps busy (about 1.6 of 2 cores
on this CPU, measured when idle: see --threads-check) estimates the wall time of an idle machine.
Prints one line per configuration and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import time

CONFIGS = {  # name: (kind, model sizes (layers, hidden, ffn, heads), teacher sizes, batch, seq_len, vocabulary rows, precision)
    "mlm 4x256 b32x128 fp32": ("mlm", (4, 256, 1024, 4), None, 32, 128, 119547, "fp32"),
    "mlm 4x256 b32x128 bf16": ("mlm", (4, 256, 1024, 4), None, 32, 128, 119547, "bf16"),
    "mlm 4x256 b32x128 bf16 v45814": ("mlm", (4, 256, 1024, 4), None, 32, 128, 45814, "bf16"),
    "mlm 4x256 b32x128 bf16 v26360": ("mlm", (4, 256, 1024, 4), None, 32, 128, 26360, "bf16"),
    "distill 2x128<-4x256 b32x128 bf16": ("distill", (2, 128, 512, 2), (4, 256, 1024, 4), 32, 128, 119547, "bf16"),
    "distill 2x128<-4x256 b32x128 bf16 v45814": ("distill", (2, 128, 512, 2), (4, 256, 1024, 4), 32, 128, 45814, "bf16"),
    "finetune 2x128 b32x64 fp32": ("finetune", (2, 128, 512, 2), None, 32, 64, 119547, "fp32"),
    "finetune 2x128 b32x64 fp32 v45814": ("finetune", (2, 128, 512, 2), None, 32, 64, 45814, "fp32"),
    "finetune 4x256 b32x64 fp32": ("finetune", (4, 256, 1024, 4), None, 32, 64, 119547, "fp32"),
    "finetune 4x312 (dbert-tiny) b32x64 fp32": ("finetune", (4, 312, 1200, 12), None, 32, 64, 119547, "fp32"),
    "eval 2x128 b64x64 fp32": ("eval", (2, 128, 512, 2), None, 64, 64, 119547, "fp32"),
    "eval 4x256 b64x64 fp32": ("eval", (4, 256, 1024, 4), None, 64, 64, 119547, "fp32"),
}


def _student_cfg(sizes):
    from ds_distil.schema.distill import StudentConfig

    layers, hidden, ffn, heads = sizes
    return StudentConfig(preset=None, num_layers=layers, hidden_size=hidden, intermediate_size=ffn, num_heads=heads, max_positions=512)


def measure(name: str, steps: int, warmup: int) -> dict:
    import torch

    from benchmarks.throughput import make_batches
    from ds_distil.model.build import bert_config, build_student
    from ds_distil.model.forward import MaskedLM
    from ds_distil.runtime.engine import DS_CONFIGS, ds_config_from, init_distributed, initialize, place_teacher
    from ds_distil.schema.distill import LossConfig, TrainConfig

    kind, sizes, teacher_sizes, batch, seq, vocab, precision = CONFIGS[name]
    d = init_distributed()
    torch.manual_seed(0)
    train = TrainConfig(micro_batch_size=batch, max_steps=steps + warmup, lr=1e-4)
    ds = ds_config_from(train, str(DS_CONFIGS / f"zero2-{precision}.json"), 1, train.max_steps, fused=False)
    if kind in ("mlm", "distill"):
        from ds_distil.distill.objectives.kd import KD
        from ds_distil.distill.objectives.mlm import MLM
        from ds_distil.distill.setup import build_step

        teacher = None
        if teacher_sizes:
            teacher = build_student(_student_cfg(teacher_sizes), vocab, 0, pad_multiple=128)
            teacher = place_teacher(teacher, d.device, torch.bfloat16 if precision == "bf16" else torch.float32)
        student = build_student(_student_cfg(sizes), vocab, 0, pad_multiple=128)
        objective = KD(LossConfig()) if teacher is not None else MLM()
        micro = build_step(initialize(MaskedLM(student, vocab), ds, 0.01), objective, teacher, vocab, 2.0, d.device, 1)
        batches = make_batches(4, batch, seq, d.device, ordinary=torch.arange(106, vocab))

        def step(i):
            micro(batches[i % len(batches)]).cpu()
    else:
        from transformers import AutoModelForSequenceClassification

        config = bert_config(None, vocab, 0, num_layers=sizes[0], hidden_size=sizes[1], intermediate_size=sizes[2], num_heads=sizes[3],
                             max_positions=512)
        config.num_labels = 2
        net = AutoModelForSequenceClassification.from_config(config)
        ids = torch.randint(106, vocab, (batch, seq))
        mask = torch.ones_like(ids)
        labels = torch.randint(0, 2, (batch,))
        if kind == "finetune":
            engine = initialize(net, ds, 0.01)

            def step(i):
                loss = engine(input_ids=ids, attention_mask=mask, labels=labels).loss
                engine.backward(loss)
                engine.step()
        else:
            net.eval()

            def step(i):
                with torch.no_grad():
                    net(input_ids=ids, attention_mask=mask).logits.argmax(-1)

    for i in range(warmup):
        step(i)
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(steps):
        step(i)
    cpu, wall = (time.process_time() - c0) / steps, (time.perf_counter() - t0) / steps
    return {"name": name, "wall_s": wall, "cpu_s": cpu, "threads": torch.get_num_threads(), "load": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--only", default=None, help="kinds to measure, comma-separated (mlm, distill, finetune, eval)")
    p.add_argument("--match", default=None, help="only configurations whose name contains this")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        r = measure(args.one, args.steps, args.warmup)
        print(f"{r['name']:<38} wall {r['wall_s']:.3f} s/step | process CPU {r['cpu_s']:.3f} s/step | {r['threads']} threads | "
              f"load {r['load']:.1f}", flush=True)
        return
    import subprocess
    import sys

    kinds = set(args.only.split(",")) if args.only else None
    for name, (kind, *_rest) in CONFIGS.items():
        if (kinds and kind not in kinds) or (args.match and args.match not in name):
            continue
        # a fresh process per configuration (memory, threads, DeepSpeed's engine state are its own)
        subprocess.run([sys.executable, "-m", "benchmarks.study_costs", "--one", name, "--steps", str(args.steps),
                        "--warmup", str(args.warmup)], check=False, env={**os.environ, "DS_ACCELERATOR": "cpu"})


if __name__ == "__main__":
    main()
