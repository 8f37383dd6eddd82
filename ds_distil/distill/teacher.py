"""Teacher signals: where the teacher's outputs for a batch come from. The step and validation call
`signal(batch)` and hand the result to the objective; neither knows which signal it has.

* `LiveTeacher`: the frozen teacher runs on the batch (no autograd, its own precision), its LM head at the masked
  positions only, over the student's vocabulary; it returns what the objective needs (logits, hidden states).
* `NoTeacher`: objectives that learn without one (MLM only).

* `CachedTeacher`: a teacher cache's sampled targets of the batch's masked slots (ds_distil/data/teacher_cache.py),
  which the stream's workers read with the samples; no teacher runs.

Each has the same three parts: `__call__`, `log_values` and `arch` (the teacher's shape for the FLOP count, None where
no teacher runs).
"""

from __future__ import annotations

import torch
from torch import nn

from ds_distil.data.masking import IGNORE_INDEX
from ds_distil.distill.batch import Batch
from ds_distil.distill.objectives.base import Needs
from ds_distil.model.forward import MaskedLM, Outputs, encoder
from ds_distil.runtime.flops import Arch


class NoTeacher:
    arch: Arch | None = None

    def __call__(self, batch: Batch) -> Outputs | None:
        return None

    def log_values(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {}


class CachedTeacher:
    """The cache's targets for the batch (SparseTargets), or None for a batch without them (validation's)."""

    arch: Arch | None = None

    def __call__(self, batch: Batch):
        return batch.teacher_targets

    def log_values(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {}


class LiveTeacher:
    """`teacher`: frozen, placed and cast (runtime.engine.place_teacher); with a trimmed vocabulary its head already
    runs over the kept rows (model.surgery.prepare_trimmed_run), and `full_head` / `kept` let `log_values` say how
    much of the teacher's probability falls outside them."""

    def __init__(self, teacher: nn.Module, vocab: int, needs: Needs, temperature: float = 1.0, compile: bool = False,
                 full_head: nn.Module | None = None, kept: torch.Tensor | None = None):
        self.model, self.needs, self.temperature = teacher, needs, temperature
        self.lm = MaskedLM(teacher, vocab)
        self.arch = Arch.of(teacher, vocab)
        self.full_head = full_head
        self.kept = kept.to(next(teacher.parameters()).device) if kept is not None else None
        if compile:
            self.lm.compile(dynamic=False)  # in place: the state dict keeps its names

    @torch.no_grad()
    def __call__(self, batch: Batch) -> Outputs:
        return self.lm(batch.input_ids, batch.attention_mask, batch.positions, self.needs.hidden, self.needs.qkv)

    @torch.no_grad()
    def log_values(self, batch: Batch) -> dict[str, torch.Tensor]:
        """With a trimmed vocabulary: `teacher/mass_outside_vocab`, the teacher's probability (at temperature T) on
        tokens that are not kept, as (sum over the batch's masked tokens, their count): the loop adds both over the
        ranks. The KL over the kept tokens renormalises this mass away. The full head runs here only (at log steps),
        for BERT teachers."""
        if self.full_head is None or not hasattr(self.model, "cls"):
            return {}
        positions = batch.positions[batch.original_targets != IGNORE_INDEX]
        hidden = encoder(self.model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask, return_dict=True).last_hidden_state
        x = self.model.cls.predictions.transform(hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions))
        full = self.full_head(x).float() / self.temperature
        kept = full.index_select(1, self.kept)
        outside = 1.0 - torch.exp(torch.logsumexp(kept, -1) - torch.logsumexp(full, -1))
        return {"teacher/mass_outside_vocab": torch.stack([outside.sum(), torch.tensor(float(outside.numel()), device=outside.device)])}
