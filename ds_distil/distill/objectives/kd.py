"""`kd`: the paper's objective. `a_kl * T^2 * KL(teacher || student) + a_mlm * MLM` per masked token, both softmaxes
at temperature T (Hinton et al.; the T^2 keeps the gradients' size when T changes), plus, when `a_hidden` > 0,
`a_hidden` times a last-hidden-state term (1 - cosine, or mean squared error) per real token, for a student as
wide as its teacher."""

from __future__ import annotations

import torch

from ds_distil.core.errors import UserError
from ds_distil.distill.batch import Batch
from ds_distil.distill.objectives.base import Needs, Objective, Outputs, Term, check_teacher, kl_term, mlm_term
from ds_distil.runtime.losses import hidden_sum, kl_sum, mlm_sum, sampled_kl_sum
from ds_distil.distill.sparse_targets import SparseTargets
from ds_distil.schema.distill import LossConfig


class KD(Objective):
    name = "kd"

    def __init__(self, cfg: LossConfig):
        self.cfg = cfg
        terms = [mlm_term(cfg.a_mlm), kl_term(cfg.a_kl, cfg.temperature)]
        self.hidden = cfg.a_hidden > 0
        if self.hidden:
            terms.append(Term("hidden", cfg.a_hidden, "token", f"validation last-hidden-state {self._hidden_text()} per real token"))
        self.terms = tuple(terms)
        self.student = self.teacher = Needs(logits=True, hidden=(-1,) if self.hidden else ())

    def _hidden_text(self) -> str:
        return "distance 1 - cosine" if self.cfg.hidden_kind == "cosine" else "mean squared error"

    def sums(self, student: Outputs, teacher: Outputs | SparseTargets | None, batch: Batch) -> dict[str, torch.Tensor]:
        """`teacher`: the live teacher's outputs, or a cache's sampled targets (then the KL is their unbiased estimate)."""
        if isinstance(teacher, SparseTargets):
            kl = sampled_kl_sum(student.logits, teacher.ids, teacher.weights, teacher.entropy, self.cfg.temperature, batch.masked)
        else:
            kl = kl_sum(student.logits, teacher.logits, self.cfg.temperature, batch.masked)
        out = {"mlm": mlm_sum(student.logits, batch.targets), "kl": kl}
        if self.hidden:
            s, t = student.hidden[-1], teacher.hidden[-1]
            out["hidden"] = hidden_sum(s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1]), self.cfg.hidden_kind, batch.real)
        return out

    def formula(self) -> str:
        c = self.cfg
        text = f"`{c.a_kl} * T^2 * KL(teacher || student) + {c.a_mlm} * MLM` at temperature T = {c.temperature}, per masked token"
        if self.hidden:
            text += f", + {c.a_hidden} x a {c.hidden_kind} last-hidden-state term per real token"
        return text

    def bind(self, teacher_config, student_config) -> None:
        check_teacher(self.name, teacher_config)
        if self.hidden and teacher_config.hidden_size != student_config.hidden_size:
            raise UserError(f"loss.a_hidden needs equal hidden sizes (teacher {teacher_config.hidden_size}, student "
                            f"{student_config.hidden_size}); set loss.a_hidden=0")
