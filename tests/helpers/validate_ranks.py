"""Validation of fixed models on a shard set's validation split, as a rank of a job would run it.

Under torchrun (gloo) every rank evaluates its share and the sums are all-reduced; as a plain process
it is one rank. Rank 0 writes the metrics as JSON. `build()` is imported by test_evaluate.py too.
The models are built from a seed on every rank (no DeepSpeed): what differs between runs is only
the rank layout and the batch size.
"""

from __future__ import annotations

import argparse
import datetime
import json

import torch
import torch.distributed as dist

from ds_distil.data.manifest import load_manifest
from ds_distil.distill import evaluate
from ds_distil.distill.batch import Translation
from ds_distil.distill.objectives.kd import KD
from ds_distil.distill.objectives.mlm import MLM
from ds_distil.distill.teacher import LiveTeacher
from ds_distil.model.build import build_student, build_teacher
from ds_distil.model.forward import MaskedLM
from ds_distil.schema.distill import DataConfig, LossConfig, StudentConfig, TeacherConfig


def build(shards: str, batch_size: int, max_samples: int = 0, vocab: str | None = None, teacher: bool = True,
          rank: int = 0, world_size: int = 1, temperature: float = 2.0):
    """(validator, student MaskedLM) for micro/tiny models seeded 0; with `vocab`, a trimmed student."""
    from ds_distil.data.vocab import load_vocab_map
    from ds_distil.model.surgery import prepare_trimmed_run

    manifest = load_manifest(shards)
    tok = manifest.tokenizer
    v, pad = int(tok["vocab_size"]), int(tok["pad_id"])
    torch.manual_seed(0)
    t = build_teacher(TeacherConfig(preset="tiny") if teacher else TeacherConfig(enabled=False), v, pad, 1)
    s_vocab, s_pad, kept, trimmed, keep_ids = v, pad, None, None, None
    if vocab:
        vmap = load_vocab_map(vocab)
        trimmed = prepare_trimmed_run(vmap, t, pad, int(tok["unk_id"]), 1)
        s_vocab, s_pad, kept, keep_ids = trimmed.vocab, trimmed.pad_id, trimmed.kept, vmap.is_kept()
    student = build_student(StudentConfig(preset="micro", dropout=0.1), s_vocab, s_pad, t, 1, teacher_rows=kept)
    objective = KD(LossConfig(temperature=temperature)) if t is not None else MLM()
    signal = LiveTeacher(t, s_vocab, objective.teacher) if t is not None else None
    validator = evaluate.build(manifest, DataConfig(shards=shards, num_workers=0), max_samples, batch_size, torch.device("cpu"),
                               objective, rank, world_size, keep_ids=keep_ids, teacher=signal,
                               translation=Translation(trimmed.id_map, trimmed.target_map) if trimmed else None)
    return validator, MaskedLM(student, s_vocab)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--shards", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--max-samples", type=int, default=0)
    p.add_argument("--vocab", default=None)
    args = p.parse_args()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    validator, student = build(args.shards, args.batch_size, args.max_samples, args.vocab, rank=dist.get_rank(),
                               world_size=dist.get_world_size())
    metrics = validator(student)
    seen = [int(i) for b in validator.batches() for i in b["index"] if i >= 0]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, seen)
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump({"metrics": metrics, "indices": gathered}, f)
    dist.barrier()  # no rank tears the group down while another still receives (gloo aborts: 'terminate called ...')
    dist.destroy_process_group()
