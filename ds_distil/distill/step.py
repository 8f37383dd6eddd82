"""One micro step of distillation, as the trainer and the throughput benchmark run it.

The frozen teacher (no autograd) and the student run on the batch; both LM heads are evaluated at
the masked positions only, over the real vocabulary (padding rows cut off); the loss terms are
per-token means over the masked tokens of the whole global batch (counts all-reduced), so any
split over ranks gives the same objective. DeepSpeed does the backward, ZeRO-2 reduction,
clipping, loss scaling, optimizer and schedule, and skips an optimizer step whose gradients are not
finite.

Nothing here makes the host wait for the device: the masked positions arrive from the loader as a
fixed-size list (static shapes, no `nonzero()`), the counts are all-reduced on the device, and the
statistics are returned as a device tensor for the caller to accumulate and read when it chooses.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from ds_distil.data.masking import IGNORE_INDEX
from ds_distil.distill.losses import distillation_losses
from ds_distil.model.forward import MaskedLM
from ds_distil.schema.distill import LossConfig

# This rank's share of the global per-token loss means, its real tokens, samples, real masked
# tokens, and whether the loss was non-finite. Sums over ranks and micro steps are meaningful.
STATS = ("total", "kl", "mlm", "hidden", "tokens", "samples", "masked", "nonfinite")


class DistillStep:
    """`step(batch)`; with a trimmed vocabulary, `id_map` [original vocab] -> student ids (tokens not
    kept -> [UNK]) and `target_map` (not kept -> IGNORE_INDEX) translate the batch for the student,
    while the teacher reads the original ids and its head already runs over the kept rows only."""

    def __init__(self, engine, teacher: nn.Module | None, vocab: int, loss: LossConfig, device: torch.device,
                 world_size: int, compile: bool = False, id_map: torch.Tensor | None = None,
                 target_map: torch.Tensor | None = None, full_head: nn.Module | None = None, kept: torch.Tensor | None = None):
        self.engine, self.device, self.world_size = engine, device, world_size
        self.teacher, self.temperature = teacher, loss.temperature
        self.id_map = id_map.to(device) if id_map is not None else None
        self.target_map = target_map.to(device) if target_map is not None else None
        self.full_head, self.kept = full_head, (kept.to(device) if kept is not None else None)
        # the teacher called as the student is: logits at the given positions over the (student's) real vocabulary
        self.teacher_lm = MaskedLM(teacher, vocab) if teacher is not None else None
        self.want_hidden = teacher is not None and loss.a_hidden > 0
        self.loss_fn: Callable[..., dict] = partial(distillation_losses, loss)
        if compile:
            # in place: the state dicts keep their names (checkpoints, export); every batch has one shape
            if self.teacher_lm is not None:
                self.teacher_lm.compile(dynamic=False)
            engine.module.compile(dynamic=False)
            self.loss_fn = torch.compile(self.loss_fn, dynamic=False)

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward, backward and (at an accumulation boundary) the optimizer step; returns STATS on the device."""
        dev = self.device
        input_ids = batch["input_ids"].to(dev, non_blocking=True)
        attention_mask = batch["attention_mask"].to(dev, non_blocking=True)
        positions = batch["positions"].to(dev, non_blocking=True)
        targets = batch["targets"].to(dev, non_blocking=True)
        student_ids = input_ids
        if self.id_map is not None:  # a trimmed vocabulary: the student's ids (a gather on the device)
            student_ids = self.id_map[input_ids]
            targets = torch.where(targets >= 0, self.target_map[targets.clamp(min=0)], IGNORE_INDEX)
        real = attention_mask.reshape(-1).float()
        masked = (targets != IGNORE_INDEX).sum().float()
        counts = torch.stack([masked, real.sum()])
        if self.world_size > 1:
            dist.all_reduce(counts)  # the global counts every rank divides by

        teacher_logits = teacher_hidden = None
        if self.teacher_lm is not None:
            with torch.no_grad():
                teacher_logits, teacher_hidden = self.teacher_lm(input_ids, attention_mask, positions)
        student_logits, student_hidden = self.engine(student_ids, attention_mask, positions)
        hidden = {}
        if self.want_hidden:
            hidden = dict(student_hidden=student_hidden.reshape(-1, student_hidden.shape[-1]),
                          teacher_hidden=teacher_hidden.reshape(-1, teacher_hidden.shape[-1]), n_hidden=counts[1], hidden_weights=real)
        terms = self.loss_fn(student_logits, targets, counts[0], teacher_logits, **hidden)
        # DeepSpeed averages gradients over ranks; our terms are already shares of the global mean.
        # A non-finite loss gives non-finite gradients, and DeepSpeed skips that optimizer step.
        self.engine.backward(terms["total"] * self.world_size)
        self.engine.step()
        total = terms["total"].detach()
        zero = torch.zeros((), device=dev)
        # from the (pinned) batch tensor: a new host tensor would be pageable, and copying that waits for the device
        samples = (batch["index"].to(dev, non_blocking=True) >= 0).sum().float()
        return torch.stack([total, terms.get("kl", zero).detach(), terms["mlm"].detach(), terms.get("hidden", zero).detach(),
                            real.sum(), samples, masked, (~torch.isfinite(total)).float()]).to(torch.float64)

    @torch.no_grad()
    def teacher_mass_outside(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """With a trimmed vocabulary: the teacher's probability (at temperature T) on tokens that are
        not kept, summed over the batch's masked tokens, and their count. The KL over the kept tokens
        renormalises this mass away. The full head is evaluated here only (the trainer calls this at
        log steps), for BERT teachers; None otherwise."""
        if self.full_head is None or self.teacher is None or not hasattr(self.teacher, "cls"):
            return None
        from ds_distil.model.forward import encoder

        dev = self.device
        targets = batch["targets"].to(dev)
        positions = batch["positions"].to(dev)[targets != IGNORE_INDEX]
        hidden = encoder(self.teacher)(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev),
                                       return_dict=True).last_hidden_state
        x = self.teacher.cls.predictions.transform(hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions))
        full = self.full_head(x).float() / self.temperature
        kept = full.index_select(1, self.kept)
        outside = 1.0 - torch.exp(torch.logsumexp(kept, -1) - torch.logsumexp(full, -1))
        return torch.stack([outside.sum(), torch.tensor(float(outside.numel()), device=dev)])  # (sum, count): ranks add them
