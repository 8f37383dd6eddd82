"""`ds-distil teacher-cache`: its configuration. The data and teacher sections are distill's own: the same keys mean
the same, and a student's run must have the cache's values of them (the cache's manifest says which it was made for)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ds_distil.core.config import setting
from ds_distil.schema.distill import DataConfig, TeacherConfig


MAX_K = 1 << 20  # far beyond any useful K (16 to 128): a record of K draws at ~20 masked slots is then 160 MiB


@dataclasses.dataclass
class SamplingConfig:
    """The sparse targets stored per masked position (section `cache`; ds_distil/distill/sparse_targets.py)."""

    method: Literal["sampled", "top_k"] = setting(
        "sampled: K draws from the teacher's distribution (Random-Sampling KD: an unbiased estimate of the KL); top_k: the K "
        "most probable tokens, renormalised (biased: the student learns a truncated teacher; kept for comparison)",
        default="sampled")
    k: int = setting("draws per masked position from the teacher's distribution (merged into distinct ids with their "
                     "frequencies): the estimate is unbiased for any K, K sets its variance and the cache's size", default=16)
    temperature: float = setting("the distillation temperature T the targets are for (the student's loss.temperature "
                                 "must equal it)", default=2.0)
    proposal_temperature: float | None = setting("draw from the teacher's softmax at this temperature (>= T, a flatter "
                                                 "proposal, with importance weights) instead of at T", default=None)
    batch_size: int = setting("samples per teacher forward pass", default=32)
    max_gib: float = setting("refuse, before writing anything, a cache whose size (estimated from the corpus, K and the masked "
                             "slots, and logged at the start) is more than this many GiB: raise it to build a bigger one",
                             default=4.0)
    splits: list[str] = setting("the corpus splits to cache: train (data.mask_copies copies under the static masks) and val "
                                "(one, under validation's masks; left out where the shards have none)",
                                default_factory=lambda: ["train", "val"])

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_K:
            raise ValueError(f"k must be in [1, {MAX_K:,}], got {self.k:,}")
        if self.max_gib <= 0:
            raise ValueError(f"max_gib must be > 0, got {self.max_gib}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.proposal_temperature is not None and self.proposal_temperature < self.temperature:
            raise ValueError(f"proposal_temperature ({self.proposal_temperature}) must be >= temperature ({self.temperature}): "
                             "a sharper proposal leaves the tail to rare draws with unbounded weights")
        if set(self.splits) - {"train", "val"}:
            raise ValueError(f"splits must be among train and val, got {self.splits}")
        if self.method == "top_k" and self.proposal_temperature is not None:
            raise ValueError("proposal_temperature is for method sampled; top_k draws nothing")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass
class TeacherCacheConfig:
    """`ds-distil teacher-cache`: run the teacher once over prepared shards and store its sparse targets."""

    data: DataConfig
    teacher: TeacherConfig
    vocab: str | None = setting("a target-language vocabulary (`ds-distil vocab`): the targets over its tokens, for students "
                                "with student.vocab set to it", default=None)
    cache: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    seed: int = setting("seed a randomly initialised teacher (a preset or config) is built with: the students' train.seed "
                        "(distill's default too), so that a run naming the same teacher builds the same one", default=42)

    def __post_init__(self) -> None:
        if not self.teacher.enabled:
            raise ValueError("a teacher cache needs a teacher: teacher.enabled must be true")
