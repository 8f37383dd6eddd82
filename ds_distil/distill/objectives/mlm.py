"""`mlm`: masked language modelling alone, no teacher: pretraining a stand-in teacher, MLM-conditioning a teacher on
the corpus (the paper's Table 4), the from-scratch baselines."""

from __future__ import annotations

import torch

from ds_distil.distill.batch import Batch
from ds_distil.distill.objectives.base import Needs, Objective, Outputs, mlm_term
from ds_distil.runtime.losses import mlm_sum


class MLM(Objective):
    name = "mlm"
    terms = (mlm_term(1.0),)
    student = Needs(logits=True)
    teacher = None

    def sums(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> dict[str, torch.Tensor]:
        return {"mlm": mlm_sum(student.logits, batch.targets)}

    def formula(self) -> str:
        return "masked language modelling cross-entropy, per masked token"
