"""Objectives: what a student learns from (ds_distil/distill/objectives/base.py says what one declares).

Adding one: a module here with an `Objective` subclass, its name in OBJECTIVES below and in schema/distill.py's
`loss.objective` choices (and OBJECTIVE_WEIGHTS), and a test. The step, validation, logs, banner, checkpoint and model card learn its
terms from it.
"""

from __future__ import annotations

from collections.abc import Callable

from ds_distil.distill.objectives.base import Metric, Needs, Objective, Outputs, Term
from ds_distil.distill.objectives.kd import KD
from ds_distil.distill.objectives.minilm import MiniLMv2
from ds_distil.distill.objectives.mlm import MLM
from ds_distil.distill.objectives.tinybert import TinyBERT
from ds_distil.schema.distill import DistillConfig

OBJECTIVES: dict[str, Callable[[DistillConfig], Objective]] = {
    "kd": lambda cfg: KD(cfg.loss),
    "mlm": lambda cfg: MLM(),
    "tinybert": lambda cfg: TinyBERT(cfg.loss),
    "minilmv2": lambda cfg: MiniLMv2(cfg.loss),
}

__all__ = ["KD", "MLM", "OBJECTIVES", "MiniLMv2", "TinyBERT", "Metric", "Needs", "Objective", "Outputs", "Term", "build", "name_of"]


def name_of(cfg: DistillConfig) -> str:
    """loss.objective, with `auto` resolved: kd with a teacher, mlm without."""
    if cfg.loss.objective == "auto":
        return "kd" if cfg.teacher.enabled else "mlm"
    return cfg.loss.objective


def build(cfg: DistillConfig) -> Objective:
    return OBJECTIVES[name_of(cfg)](cfg)
