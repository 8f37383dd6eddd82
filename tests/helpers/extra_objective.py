"""A test objective: the KD objective plus one more term with a trainable parameter of its own.

`extra` = (w * mean over the hidden units of the student's last hidden state + b)^2 per real token, weight 0.01,
where w, b are the objective's own (an nn.Linear(1, 1)): trained with the student, left out of the export. Nothing
outside this file names the term: it must reach the logs, validation and the model card from the declaration.
`register()` makes it selectable as loss.objective=extra.
"""

from __future__ import annotations

import torch
from torch import nn

from ds_distil.distill import objectives
from ds_distil.distill.objectives.base import Needs, Term
from ds_distil.distill.objectives.kd import KD

NAME = "extra"


class Extra(KD):
    name = NAME

    def __init__(self, cfg):
        super().__init__(cfg)
        self.terms = (*self.terms, Term(NAME, 0.01, "token", "validation extra term of the test objective"))
        self.student = Needs(logits=True, hidden=(-1,))
        torch.manual_seed(1234)
        self.module = nn.Linear(1, 1)

    def sums(self, student, teacher, batch) -> dict[str, torch.Tensor]:
        out = super().sums(student, teacher, batch)
        h = student.hidden[-1].float()
        x = self.module(h.mean(-1, keepdim=True)).reshape(-1)
        out[NAME] = (x.pow(2) * batch.real).sum()
        return out

    def formula(self) -> str:
        return super().formula() + f", + 0.01 * {NAME}"


def register() -> None:
    objectives.OBJECTIVES[NAME] = lambda cfg: Extra(cfg.loss)
