"""What an objective is: the terms it produces, what it reads from student and teacher, how it describes itself.

An objective turns the student's and the teacher's outputs on a batch into per-term SUMS (`sums`). Everything
else is derived from its declaration here, once, for every objective: the step divides each sum by the global
count its term is averaged over (masked tokens or real tokens of all ranks) and adds the weighted means into the
total it trains on; validation accumulates the same sums over the held-out set; the loop logs each term as
`loss/<name>` (TensorBoard, metrics.jsonl, the console); validation reports it as its `val_key`; the banner and the
model card print `formula()`; the checkpoint records `declaration()`, from which the card of an export is written.

An objective may own trainable parameters (`module`, e.g. a projection of the student's hidden states to the
teacher's width): training updates them with the student, the export leaves them out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from ds_distil.core.errors import UserError
from ds_distil.distill.batch import Batch
from ds_distil.model.forward import Outputs  # what a model gives an objective: logits, hidden states, queries/keys/values

COUNTS = ("masked", "token", "pair")  # what a term may be averaged over: Batch.counts(), all-reduced over the ranks


@dataclass(frozen=True)
class Needs:
    """What an objective reads from one model: its MLM logits at the masked positions, the hidden states of these
    layers (0: the embeddings' output, i: layer i's, -1: the last layer's), and the self-attention queries, keys and
    values of these layers (1-based; model.forward.layer_qkv)."""

    logits: bool = True
    hidden: tuple[int, ...] = ()
    qkv: tuple[int, ...] = ()

    @property
    def intermediate(self) -> bool:
        """Reads more than the output layer: only a teacher that runs can give it."""
        return any(layer != -1 for layer in self.hidden) or bool(self.qkv)


@dataclass(frozen=True)
class Metric:
    """A validation figure as the model card and the Hub's model-index show it."""

    key: str  # e.g. val/kl
    index_type: str  # model-index metric type: loss, kl_divergence, accuracy, ...
    description: str
    percent: bool = False


@dataclass(frozen=True)
class Term:
    """One term of an objective: logged as loss/<name>, validated as `val_key`, weighted by `weight` in the total."""

    name: str
    weight: float
    per: Literal["masked", "token", "pair"]  # averaged per masked token, real token, or real (query, key) pair of the global batch
    description: str  # the validation figure, e.g. "validation KL(teacher || student) per masked token, T = 2"
    val_key: str = ""  # default val/<name>
    index_type: str = "loss"
    label: str = ""  # on the console; default: the name

    @property
    def log_key(self) -> str:
        return f"loss/{self.name}"

    @property
    def val(self) -> str:
        return self.val_key or f"val/{self.name}"

    @property
    def metric(self) -> Metric:
        return Metric(self.val, self.index_type, self.description)


MLM_LOSS = "val/mlm_loss"  # the MLM term's validation key: validation's perplexity is its exp


def mlm_term(weight: float) -> Term:
    """The student's MLM cross-entropy against the original tokens: every objective here has it, and validation
    derives the perplexity from it."""
    return Term("mlm", weight, "masked", "validation MLM loss (nats per masked token)", val_key=MLM_LOSS, label="mlm loss")


def kl_term(weight: float, temperature: float) -> Term:
    """KL(teacher || student) at the masked positions, softmaxes at temperature T (weighted `weight` * T^2)."""
    return Term("kl", weight * temperature**2, "masked", f"validation KL(teacher || student) per masked token, at the training "
                f"temperature T = {temperature} (not scaled by T^2)", index_type="kl_divergence")


def check_teacher(name: str, teacher_config) -> None:
    if teacher_config is None:
        raise UserError(f"loss.objective {name} distils from a teacher, but teacher.enabled is false; set teacher.enabled=true "
                        "(and teacher.pretrained, config or preset), or loss.objective=mlm to train without one")


class Objective:
    name: str = ""
    terms: tuple[Term, ...] = ()
    student: Needs = Needs()
    teacher: Needs | None = Needs()  # None: trained without a teacher
    module: nn.Module | None = None  # the objective's own trainable parameters, if any

    def sums(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> dict[str, torch.Tensor]:
        """Each term's sum over this batch (fp32 scalars), before any averaging."""
        raise NotImplementedError

    def formula(self) -> str:
        """The loss in words and symbols, for the banner and the model card."""
        raise NotImplementedError

    def bind(self, teacher_config, student_config) -> None:
        """Fit the objective to this teacher and student (HF configs; the teacher's None without one), before anything
        runs: refuse (UserError) a pair it cannot be computed for, resolve what depends on their sizes (layer maps),
        and build its own parameters (`module`). Called with the RNG seeded by train.seed, after the models are built,
        so every rank builds the same."""

    def loss(self, student: Outputs, teacher: Outputs | None, batch: Batch,
             counts: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(the total trained on, each term's mean in `terms` order): sums divided by the global `counts` (COUNTS)."""
        sums = self.sums(student, teacher, batch)
        count = dict(zip(COUNTS, counts.clamp(min=1.0)))
        means = [sums[t.name] / count[t.per] for t in self.terms]
        total = None
        for t, mean in zip(self.terms, means):
            part = t.weight * mean
            total = part if total is None else total + part
        return total, means

    def declaration(self) -> dict:
        """What the checkpoint records and the model card reads: JSON."""
        return {"name": self.name, "formula": self.formula(), "teacher": self.teacher is not None,
                "terms": [{**asdict(t), "val_key": t.val, "label": t.label or t.name} for t in self.terms]}


def terms_of(declaration: dict) -> list[Term]:
    return [Term(**t) for t in declaration["terms"]]
