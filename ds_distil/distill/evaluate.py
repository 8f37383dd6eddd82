"""Held-out validation of a distillation run: the student on the shards' validation split.

What is measured (the same figures whatever the ranks, workers or batch size, and the same masks in every run
over the same shards): every term of the run's objective, as training computes it, averaged as its declaration
says, under the term's `val_key` (the KD objective: `val/mlm_loss`, `val/kl` at temperature T not scaled by T^2,
`val/hidden`); and, per masked token, what every student is judged by:

    val/perplexity      exp of the MLM loss
    val/mlm_accuracy    the student's top-1 prediction is the original token
    val/top1_agreement  the student's top-1 token is the teacher's (where the teacher signal gives logits)

Why the masking is fixed: the training stream masks batch j of rank r with a generator seeded by
(seed, epoch, rank, j), so a sample's masks depend on the rank layout. Here every validation sample
is masked on its own, by a generator seeded by a fixed constant and its index in the split, so the
same sample gets the same masks on any layout, at any step, in any run over the same shards.

The first `log.eval_max_samples` samples of the split (in shard order) are split into contiguous
ranges over the ranks; each rank evaluates its share in batches of `train.micro_batch_size` (the last
one padded with empty samples, so a compiled model sees the training shapes) and adds up sums (losses,
agreements, counts); one all-reduce of those sums gives every rank the figures of the whole set. So
1 rank and 2 ranks give the same numbers up to float summation order.

The student runs through the DeepSpeed engine (its forward, no backward, no step) in eval mode under
torch.no_grad, then goes back to training mode; the evaluation draws nothing from the global RNG, so
training continues exactly as it would have without it (exact resume holds). The objective, the teacher
signal, the masked-positions-only heads and a trimmed vocabulary's id translation are the training step's.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist

from ds_distil.core.dist import rank_share
from ds_distil.data.manifest import Manifest
from ds_distil.data.masking import IGNORE_INDEX, static_positions
from ds_distil.data.stream import MLMStream, validation_masks
from ds_distil.distill.batch import Translation, to_device
from ds_distil.distill.objectives.base import MLM_LOSS, Metric, Objective, Term
from ds_distil.distill.teacher import NoTeacher

log = logging.getLogger(__name__)

# what validation reports beside the objective's terms (their keys, and how the model card shows them)
PERPLEXITY = Metric("val/perplexity", "perplexity", "validation perplexity")
ACCURACY = Metric("val/mlm_accuracy", "accuracy", "validation MLM top-1 accuracy", percent=True)
AGREEMENT = Metric("val/top1_agreement", "agreement", "validation teacher-student top-1 agreement", percent=True)
# after the objective's term sums, every rank adds up: student top-1 == target, student top-1 == teacher top-1,
# masked tokens (with a target the student has), real tokens, samples
COUNTS = ("correct", "agree", "masked", "tokens", "pairs", "samples")  # what validation adds up beside the terms' sums


def has_validation_split(manifest: Manifest) -> bool:
    return int(manifest.data["splits"].get("val", {}).get("samples", 0)) > 0


class Validator:
    """`validator(model)` -> the metrics of the validation set (the same dict on every rank).

    `model` is called as the training step calls the engine: (student ids, attention_mask, positions, hidden layers)
    -> (logits at the positions over the student's vocabulary, {layer: hidden states}). `teacher` is the run's
    teacher signal, `translation` a trimmed vocabulary's id translation, as in DistillStep.
    """

    def __init__(self, stream: MLMStream, max_samples: int, batch_size: int, device: torch.device, objective: Objective,
                 teacher=None, translation: Translation | None = None, rank: int = 0, world_size: int = 1, cache=None):
        self.stream, self.batch_size, self.device = stream, batch_size, device
        self.cache = cache  # a teacher cache with a held-out copy: its targets stand in for the teacher's outputs
        self.objective, self.teacher = objective, teacher if teacher is not None else NoTeacher()
        self.translation = translation.to(device) if translation is not None else None
        self.rank, self.world_size = rank, world_size
        self.n_samples = min(stream.n_samples, max_samples) if max_samples > 0 else stream.n_samples
        self.start, self.count = rank_share(self.n_samples, rank, world_size)

    # -- the data: this rank's share, fixed masks

    def mask(self, ids: np.ndarray, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels) of one sample: its masks depend on its index in the split alone."""
        s = self.stream
        return validation_masks(ids, index, s.special_ids, s.random_ids, s.mask_id, s.cfg)

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's share in batches of batch_size (the last padded with empty samples, index -1)."""
        s = self.stream
        items = []
        for ids, index in s.read(self.start, self.count):
            items.append((ids, index))
            if len(items) == self.batch_size:
                yield self._collate(items)
                items = []
        if items:
            yield self._collate(items)

    def _collate(self, items: list[tuple[np.ndarray, int]]) -> dict[str, torch.Tensor]:
        s = self.stream
        rows = [self.mask(ids, index) for ids, index in items]
        originals = [torch.from_numpy(ids.astype(np.int64)) for ids, _ in items]
        for _ in range(self.batch_size - len(items)):  # padding samples: no attention, no target
            empty = torch.full((s.seq_len,), s.pad_id, dtype=torch.long)
            rows.append((empty, torch.full_like(empty, IGNORE_INDEX)))
            originals.append(empty)
        labels = torch.stack([r[1] for r in rows])
        positions, targets = static_positions(labels, s.max_masked)
        indices = [index for _, index in items] + [-1] * (self.batch_size - len(items))
        batch = {"input_ids": torch.stack([r[0] for r in rows]), "labels": labels,
                 "attention_mask": (torch.stack(originals) != s.pad_id).long(), "positions": positions, "targets": targets,
                 "index": torch.tensor(indices, dtype=torch.long)}
        if self.cache is not None:
            batch.update(self.cache.batch_targets("val", 0, labels, indices, s.max_masked))
        return batch

    # -- the evaluation

    @torch.no_grad()
    def _sums(self, model, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        b = to_device(raw, self.device, self.translation, non_blocking=False)
        teacher = self.teacher(b)
        needs = self.objective.student
        student = model(b.student_ids, b.attention_mask, b.positions, needs.hidden, needs.qkv)
        terms = self.objective.sums(student, teacher, b)
        real = b.targets != IGNORE_INDEX
        s_top = student.logits.argmax(-1)
        live = teacher is not None and self.cache is None  # sampled targets have no top-1 to agree with
        agree = ((s_top == teacher.logits.argmax(-1)) & real).sum() if live else torch.zeros((), device=self.device)
        counts = (((s_top == b.targets) & real).sum(), agree, real.sum(), b.attention_mask.sum(), b.counts()[2], (b.index >= 0).sum())
        return torch.stack([x.to(torch.float64) for x in (*(terms[t.name] for t in self.objective.terms), *counts)])

    def __call__(self, model) -> dict[str, float]:
        """Evaluate `model` (an engine or a MaskedLM) on the validation set; every rank must call this."""
        t0 = time.perf_counter()
        inner = getattr(model, "module", model)
        was_training = inner.training
        model.eval()
        try:
            acc = torch.zeros(len(self.objective.terms) + len(COUNTS), dtype=torch.float64, device=self.device)
            for batch in self.batches():
                acc += self._sums(model, batch)
        finally:
            model.train(was_training)
        if self.world_size > 1:
            dist.all_reduce(acc)  # one collective per evaluation, on every rank whatever its share
        return self.metrics(acc.cpu(), time.perf_counter() - t0)

    def metrics(self, acc: torch.Tensor, elapsed: float) -> dict[str, float]:
        values = acc.tolist()
        terms, v = values[: len(self.objective.terms)], dict(zip(COUNTS, values[len(self.objective.terms):]))
        n = {"masked": max(v["masked"], 1.0), "token": max(v["tokens"], 1.0), "pair": max(v["pairs"], 1.0)}
        out = {t.val: s / n[t.per] for t, s in zip(self.objective.terms, terms)}
        if MLM_LOSS in out:
            out[PERPLEXITY.key] = math.exp(min(out[MLM_LOSS], 700.0))  # exp overflows a float beyond ~709
        out[ACCURACY.key] = v["correct"] / n["masked"]
        if self.objective.teacher is not None and self.objective.teacher.logits and self.cache is None:
            out[AGREEMENT.key] = v["agree"] / n["masked"]
        out.update({"val/samples": v["samples"], "val/masked_tokens": v["masked"], "val/tokens": v["tokens"], "val/seconds": elapsed})
        return out


def build(manifest: Manifest, stream_cfg, max_samples: int, batch_size: int, device: torch.device, objective: Objective,
          rank: int, world_size: int, keep_ids: torch.Tensor | None = None, **signal) -> Validator | None:
    """A Validator over the manifest's validation split, or None (logged once) when it has none. `signal`: the
    teacher signal and the vocabulary translation (Validator's keywords)."""
    if not has_validation_split(manifest):
        if rank == 0:
            log.warning("%s has no validation split (prepared with val_fraction 0): no validation metrics in this run; "
                        "prepare with --val-fraction 0.01 to have them", manifest.directory)
        return None
    stream = MLMStream(manifest, stream_cfg, batch_size=batch_size, split="val", rank=rank, world_size=world_size, shuffle=False,
                       keep_ids=keep_ids)
    return Validator(stream, max_samples, batch_size, device, objective, rank=rank, world_size=world_size, **signal)


def console_line(step: int, values: dict[str, float], terms: tuple[Term, ...]) -> str:
    line = f"step {step} validation"
    for t in terms:
        if t.val not in values:  # a term validation cannot measure (the KL of a run from a teacher cache)
            continue
        line += f" | {t.label or t.name} {values[t.val]:.4f}"
        if t.val == MLM_LOSS:
            line += f" | perplexity {values[PERPLEXITY.key]:.2f}"
    if AGREEMENT.key in values:
        line += f" | top-1 agreement {values[AGREEMENT.key]:.2%}"
    return line + (f" | {int(values['val/samples']):,} samples, {int(values['val/masked_tokens']):,} masked tokens"
                   f" ({values['val/seconds']:.1f} s)")
