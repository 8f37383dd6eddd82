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

from ds_distil.config import LossConfig
from ds_distil.losses import IGNORE_INDEX, distillation_losses
from ds_distil.models import MaskedLM

# This rank's share of the global per-token loss means, its real tokens, samples, real masked
# tokens, and whether the loss was non-finite. Sums over ranks and micro steps are meaningful.
STATS = ("total", "kl", "mlm", "hidden", "tokens", "samples", "masked", "nonfinite")


class DistillStep:
    def __init__(self, engine, teacher: nn.Module | None, vocab: int, loss: LossConfig, device: torch.device,
                 world_size: int, compile: bool = False):
        self.engine, self.device, self.world_size = engine, device, world_size
        # the teacher called as the student is: logits at the given positions over the real vocabulary
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
        real = attention_mask.reshape(-1).float()
        masked = (targets != IGNORE_INDEX).sum().float()
        counts = torch.stack([masked, real.sum()])
        if self.world_size > 1:
            dist.all_reduce(counts)  # the global counts every rank divides by

        teacher_logits = teacher_hidden = None
        if self.teacher_lm is not None:
            with torch.no_grad():
                teacher_logits, teacher_hidden = self.teacher_lm(input_ids, attention_mask, positions)
        student_logits, student_hidden = self.engine(input_ids, attention_mask, positions)
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
        samples = (batch["index"] >= 0).sum().to(dev, non_blocking=True).float()
        return torch.stack([total, terms.get("kl", zero).detach(), terms["mlm"].detach(), terms.get("hidden", zero).detach(),
                            real.sum(), samples, masked, (~torch.isfinite(total)).float()]).to(torch.float64)
