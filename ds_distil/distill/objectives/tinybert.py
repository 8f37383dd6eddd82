"""`tinybert`: TinyBERT's layer-to-layer distillation (Jiao et al. 2020), with the KL and MLM terms of `kd`.

For a layer map g (student layer m <- teacher layer g(m); uniform by default, g(m) = m * L_t / L_s as TinyBERT maps):
* `attention`: sum over m of the MSE between the attention SCORES QK^T / sqrt(d_head) (before the softmax: TinyBERT
  found the unnormalised maps converge faster) of student layer m and teacher layer g(m), per real (query, key) pair
  and head. Needs equal head counts. The scores are recomputed from each layer's input with the layer's own query and
  key projections (model.forward.layer_qkv), so both models keep their fused attention kernel.
* `layers`: sum over m = 0..L_s (0: the embeddings' output, mapped to the teacher's) of the MSE between the student's
  hidden states, through a learned projection W (student width -> teacher width; one for every layer, as TinyBERT's
  released code has it; none when the widths are equal), and the teacher's, per real token.
* `kl` and `mlm`: `kd`'s, at the masked positions (TinyBERT's prediction-layer term is the soft cross-entropy, which
  differs from the KL by the teacher's entropy only: the same gradient).
W is trained with the student, checkpointed and resumed with it, and left out of the export.
"""

from __future__ import annotations

import torch
from torch import nn

from ds_distil.core.errors import UserError
from ds_distil.distill.batch import Batch
from ds_distil.distill.objectives.base import Needs, Objective, Outputs, Term, check_teacher, kl_term, mlm_term
from ds_distil.runtime.losses import attention_score_sum, hidden_sum, kl_sum, mlm_sum
from ds_distil.schema.distill import LossConfig


def uniform_map(teacher_layers: int, student_layers: int) -> list[int]:
    """TinyBERT's uniform strategy: student layer m (1-based) <- teacher layer m * L_t / L_s (rounded down)."""
    return [m * teacher_layers // student_layers for m in range(1, student_layers + 1)]


def resolve_map(layer_map: list[int] | None, teacher_layers: int, student_layers: int) -> list[int]:
    if layer_map is None:
        if student_layers > teacher_layers:
            raise UserError(f"the student has more layers ({student_layers}) than the teacher ({teacher_layers}): set loss.layer_map "
                            f"to the teacher layer of each of the {student_layers} student layers")
        return uniform_map(teacher_layers, student_layers)
    if len(layer_map) != student_layers:
        raise UserError(f"loss.layer_map {layer_map} has {len(layer_map)} entries for a student of {student_layers} layers; give one "
                        f"teacher layer (1..{teacher_layers}) per student layer, or null for the uniform map")
    outside = [x for x in layer_map if not 1 <= x <= teacher_layers]
    if outside:
        raise UserError(f"loss.layer_map {layer_map} names teacher layer(s) {outside} outside the teacher's 1..{teacher_layers}; "
                        "use layer numbers within it (0, the embeddings, is always mapped to the embeddings)")
    return list(layer_map)


class TinyBERT(Objective):
    name = "tinybert"

    def __init__(self, cfg: LossConfig):
        self.cfg = cfg
        terms = [mlm_term(cfg.a_mlm), kl_term(cfg.a_kl, cfg.temperature)]
        if cfg.a_attention > 0:
            terms.append(Term("attention", cfg.a_attention, "pair", "validation attention-score MSE summed over the mapped layers, "
                              "per real (query, key) pair and head", label="attention mse"))
        if cfg.a_layers > 0:
            terms.append(Term("layers", cfg.a_layers, "token", "validation hidden-state MSE summed over the embeddings and the "
                              "mapped layers, per real token", label="layers mse"))
        self.terms = tuple(terms)
        self.map: list[int] = []
        self.heads = 0

    def bind(self, teacher_config, student_config) -> None:
        check_teacher(self.name, teacher_config)
        t, s = teacher_config, student_config
        self.map = resolve_map(self.cfg.layer_map, t.num_hidden_layers, s.num_hidden_layers)
        attention = self.cfg.a_attention > 0
        if attention and t.num_attention_heads != s.num_attention_heads:
            raise UserError(f"tinybert's attention term compares head by head, but the teacher has {t.num_attention_heads} heads and "
                            f"the student {s.num_attention_heads}; set student.num_heads={t.num_attention_heads}, or loss.a_attention=0")
        self.heads = s.num_attention_heads
        layers = tuple(range(1, s.num_hidden_layers + 1))
        hidden = self.cfg.a_layers > 0
        self.student = Needs(logits=True, hidden=(0, *layers) if hidden else (), qkv=layers if attention else ())
        self.teacher = Needs(logits=True, hidden=(0, *self.map) if hidden else (), qkv=tuple(self.map) if attention else ())
        if hidden and s.hidden_size != t.hidden_size:
            self.module = nn.ModuleDict({"projection": nn.Linear(s.hidden_size, t.hidden_size)})

    def sums(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> dict[str, torch.Tensor]:
        out = {"mlm": mlm_sum(student.logits, batch.targets), "kl": kl_sum(student.logits, teacher.logits, self.cfg.temperature, batch.masked)}
        pairs = list(zip(range(1, len(self.map) + 1), self.map))
        if self.cfg.a_attention > 0:
            out["attention"] = sum(attention_score_sum(student.qkv[m][:2], teacher.qkv[g][:2], self.heads, batch.attention_mask)
                                   for m, g in pairs)
        if self.cfg.a_layers > 0:
            project = self.module["projection"] if self.module is not None else (lambda x: x)
            total = None
            for m, g in [(0, 0), *pairs]:
                s, t = project(student.hidden[m]), teacher.hidden[g]
                part = hidden_sum(s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1]), "mse", batch.real)
                total = part if total is None else total + part
            out["layers"] = total
        return out

    def formula(self) -> str:
        c = self.cfg
        parts = []
        if c.a_attention > 0:
            parts.append(f"{c.a_attention} * sum_m MSE(attention scores of student layer m, teacher layer g(m))")
        if c.a_layers > 0:
            w = " W" if self.module is not None else ""
            parts.append(f"{c.a_layers} * sum_m MSE(student hidden states m{w}, teacher's g(m)) over m = 0 (embeddings) .. L_s")
        parts.append(f"{c.a_kl} * T^2 * KL(teacher || student) + {c.a_mlm} * MLM at temperature T = {c.temperature}")
        how = "uniform" if c.layer_map is None else "explicit"
        mapped = ", ".join(f"{m} <- {g}" for m, g in enumerate(self.map, start=1)) or "resolved at the start of the run"
        return f"TinyBERT: `{' + '.join(parts)}`; layer map g ({how}, student <- teacher): {mapped}"
