"""`minilmv2`: MiniLMv2's multi-head self-attention relation distillation (Wang et al. 2021), with the KL and MLM
terms of `kd`.

`relations`: for each of the queries, keys and values of teacher layer j (`loss.teacher_layer`, the last by default)
and of the student's last layer, split into `loss.relation_heads` relation heads (the heads of all attention heads'
vectors side by side, split anew: any head count and width on either side), the relation of each real token to the
real tokens, softmax(x x^T / sqrt(d_r)). The term is KL(teacher || student) of each row, averaged over the relation
heads, summed over Q-Q, K-K and V-V, per real token. `auto` relation heads is the largest count <= 12 dividing both
widths: 12, the former default, wherever it fits (dBERT Base and Tiny from mBERT), 8 for widths 128 and 64. No parameters of its own. Queries, keys and values are
recomputed from the layer's input with its own projections (model.forward.layer_qkv): the fused attention kernels stay.
"""

from __future__ import annotations

import torch

from ds_distil.core.errors import UserError
from ds_distil.distill.batch import Batch
from ds_distil.distill.objectives.base import Needs, Objective, Outputs, Term, check_teacher, kl_term, mlm_term
from ds_distil.runtime.losses import kl_sum, mlm_sum, relation_kl_sum
from ds_distil.schema.distill import LossConfig


AUTO_MAX_HEADS = 12  # `auto` relation heads: the largest count up to this that divides both widths


class MiniLMv2(Objective):
    name = "minilmv2"

    def __init__(self, cfg: LossConfig):
        self.cfg = cfg
        self.heads = cfg.relation_heads  # "auto" until bind() knows the widths
        self.terms = self._terms()
        self.teacher_layer = self.student_layer = 0

    def _terms(self) -> tuple[Term, ...]:
        cfg = self.cfg
        return (mlm_term(cfg.a_mlm), kl_term(cfg.a_kl, cfg.temperature),
                Term("relations", cfg.a_relations, "token", f"validation Q-Q + K-K + V-V self-attention relation KL(teacher || "
                     f"student) over {self.heads} relation heads, per real token", label="relations kl"))

    def bind(self, teacher_config, student_config) -> None:
        check_teacher(self.name, teacher_config)
        t, s = teacher_config, student_config
        if self.cfg.relation_heads == "auto":
            self.heads = _common_divisor(t.hidden_size, s.hidden_size, AUTO_MAX_HEADS)
            self.terms = self._terms()
        heads = self.heads
        layer = self.cfg.teacher_layer
        if layer > t.num_hidden_layers:
            raise UserError(f"loss.teacher_layer {layer} is outside the teacher's 1..{t.num_hidden_layers} layers; choose one of them "
                            "(-1: the last)")
        if t.hidden_size % heads or s.hidden_size % heads:
            raise UserError(f"loss.relation_heads {heads} must divide both hidden sizes (teacher {t.hidden_size}, student "
                            f"{s.hidden_size}); choose a common divisor, e.g. {_common_divisor(t.hidden_size, s.hidden_size, heads)}")
        self.teacher_layer = t.num_hidden_layers if layer == -1 else layer
        self.student_layer = s.num_hidden_layers
        self.student = Needs(logits=True, qkv=(self.student_layer,))
        self.teacher = Needs(logits=True, qkv=(self.teacher_layer,))

    def sums(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> dict[str, torch.Tensor]:
        heads, mask = self.heads, batch.attention_mask
        relations = sum(relation_kl_sum(s, t, heads, mask)
                        for s, t in zip(student.qkv[self.student_layer], teacher.qkv[self.teacher_layer]))
        return {"mlm": mlm_sum(student.logits, batch.targets), "kl": kl_sum(student.logits, teacher.logits, self.cfg.temperature, batch.masked),
                "relations": relations}

    def formula(self) -> str:
        c = self.cfg
        layer = f"teacher layer {self.teacher_layer}" if self.teacher_layer else f"teacher layer {c.teacher_layer} (-1: the last)"
        return (f"MiniLMv2: `{c.a_relations} * sum over Q-Q, K-K, V-V of KL(teacher relations || student relations) + {c.a_kl} * T^2 * "
                f"KL(teacher || student) + {c.a_mlm} * MLM` at temperature T = {c.temperature}; relations of {layer} -> the student's "
                f"last layer, {self.heads} relation heads" + (" (auto: the most <= 12 dividing both widths)" if c.relation_heads == "auto" else ""))


def _common_divisor(a: int, b: int, near: int) -> int:
    """The common divisor of a and b nearest to `near` (at most it where one is)."""
    common = [d for d in range(1, min(a, b) + 1) if a % d == 0 and b % d == 0]
    below = [d for d in common if d <= near]
    return max(below) if below else min(common)
