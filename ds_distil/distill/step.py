"""One micro step of distillation, as the loop and the throughput benchmark run it.

The teacher signal gives the teacher's outputs for the batch (the frozen teacher running, without autograd), the
student runs through its DeepSpeed engine, both LM heads at the masked positions only, over the real vocabulary
(padding rows cut off); the objective turns them into its terms, each a mean over the masked (or real) tokens of the
whole global batch: `window` takes an optimizer step's micro batches together, sums their counts and all-reduces them
once, so any split of the same global batch over ranks and accumulation gives the same loss and update (to rounding;
distill/elastic.py relies on it when a run resumes on other ranks). DeepSpeed does the backward,
the ZeRO-2 reduction (none on one fp32 rank: runtime/engine.zero_stage), clipping, loss scaling, optimizer and
schedule, and skips an optimizer step whose gradients are not finite.

Nothing here makes the host wait for the device: the masked positions arrive from the loader as a fixed-size list
(static shapes, no `nonzero()`), the counts are all-reduced on the device, and the statistics are returned as a
device tensor for the caller to accumulate and read when it chooses.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ds_distil.distill.batch import Batch, Translation, to_device
from ds_distil.distill.objectives.base import Objective


class DistillStep:
    """`step(batch)` -> this rank's statistics of the micro step, named by `stat_names`: the total loss and each of
    the objective's terms (this rank's share of the global per-token means), its real tokens, samples and masked
    tokens, and whether the loss was non-finite. Sums over ranks and micro steps are meaningful."""

    def __init__(self, engine, objective: Objective, teacher, device: torch.device, world_size: int,
                 translation: Translation | None = None, compile: bool = False):
        self.engine, self.objective, self.teacher = engine, objective, teacher
        self.device, self.world_size = device, world_size
        self.translation = translation.to(device) if translation is not None else None
        self.stat_names = ("total", *(t.name for t in objective.terms), "tokens", "samples", "masked", "nonfinite")
        self.loss = objective.loss
        self.last: Batch | None = None  # the last micro batch, on the device (the teacher's log-step figures read it)
        if compile:
            # in place: the state dicts keep their names (checkpoints, export); every batch has one shape
            engine.module.compile(dynamic=False)
            self.loss = torch.compile(self.loss, dynamic=False)

    def prepare(self, raw: dict[str, torch.Tensor]) -> tuple[Batch, torch.Tensor, torch.Tensor]:
        """The micro batch on the device (kept as `last`), this rank's counts and the global ones."""
        b = self.last = to_device(raw, self.device, self.translation)
        local = b.counts()
        counts = local.clone()
        if self.world_size > 1:
            dist.all_reduce(counts)  # the global counts every rank divides by
        return b, local, counts

    def student_loss(self, b: Batch, teacher, counts: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The student's forward through its engine and the objective's total and terms, against the teacher's outputs."""
        needs = self.objective.student
        student = self.engine(b.student_ids, b.attention_mask, b.positions, needs.hidden, needs.qkv)
        return self.loss(student, teacher, b, counts)

    def __call__(self, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        """One micro batch that is a whole optimizer step's (no accumulation): forward, backward, the optimizer step;
        returns the statistics on the device."""
        b, local, counts = self.prepare(raw)
        return self._micro(b, local, counts, 1)

    def window(self, raws: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """An optimizer step's micro batches (its accumulation window), each forward and backward with the window's
        global counts, the optimizer step at the last; returns the statistics summed over them."""
        if len(raws) == 1:
            return self(raws[0])
        batches = [to_device(raw, self.device, self.translation) for raw in raws]
        locals_ = [b.counts() for b in batches]
        counts = torch.stack(locals_).sum(0)
        if self.world_size > 1:
            dist.all_reduce(counts)  # once per optimizer step: what every micro batch of every rank divides by
        stats = None
        for b, local in zip(batches, locals_):
            self.last = b
            s = self._micro(b, local, counts, len(batches))
            stats = s if stats is None else stats + s
        return stats

    def _micro(self, b: Batch, local: torch.Tensor, counts: torch.Tensor, micro: int) -> torch.Tensor:
        """Forward and backward of one micro batch of a window of `micro` (its terms: shares of the window's global
        means), and DeepSpeed's step (the update at the window's last). The statistics are scaled by `micro`, so that
        summed over the window's micro batches and divided by their number they give the window's means, as a window
        of one does."""
        total, means = self.student_loss(b, self.teacher(b), counts)
        # DeepSpeed averages gradients over ranks and divides by the accumulation steps; our terms are already shares
        # of the window's global mean. A non-finite loss gives non-finite gradients, and DeepSpeed skips that step.
        self.engine.backward(total * (self.world_size * micro))
        self.engine.step()
        total = total.detach()
        samples = (b.index >= 0).sum().float()
        return torch.stack([total * micro, *(m.detach() * micro for m in means), local[1], samples, local[0],
                            (~torch.isfinite(total)).float()]).to(torch.float64)
