"""A run resumed on another number of ranks: the global batch it began with is kept, the accumulation re-chosen.

global batch G = micro batch x accumulation x ranks. On W' ranks the run keeps G: the accumulation becomes G / (micro x
W'), with the configured micro batch where that is a whole number, else the largest smaller micro batch that makes it
one (named on the console: a smaller micro batch needs less memory, never more). Where no whole number keeps G (W' does
not divide G), the resume is refused naming the nearest global batches W' ranks can run and the key that accepts a
change, `train.allow_global_batch_change=true`: the run then takes the configured micro batch and accumulation on W'
ranks, and its learning-rate schedule continues by samples (the schedule's position and length are rescaled from steps
of the old global batch to steps of the new one, so the LR at each sample seen is the one it would have had).

Since every term is a mean over the whole global batch (distill/step.py: counts over the accumulation window and the
ranks), the same G split otherwise computes the same update, to floating-point rounding.
"""

from __future__ import annotations

import dataclasses
import logging
import math

from ds_distil.core.dist import keep_global_batch
from ds_distil.core.errors import UserError
from ds_distil.schema.distill import DistillConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Split:
    micro: int
    accum: int
    world: int

    @property
    def global_batch(self) -> int:
        return self.micro * self.accum * self.world

    def text(self) -> str:
        return f"micro {self.micro} x accumulation {self.accum} x {self.world} rank(s)"


def saved_split(trainer_state: dict) -> Split:
    """The split a checkpoint was written under: its own record, or (a checkpoint from before) its resume fingerprint."""
    if "split" in trainer_state:
        s = trainer_state["split"]
        return Split(int(s["micro"]), int(s["accum"]), int(s["world"]))
    fp = trainer_state.get("resume") or {}
    cfg = trainer_state.get("config", {}).get("train", {})
    micro = fp.get("train.micro_batch_size", cfg.get("micro_batch_size", 32))
    accum = fp.get("train.grad_accum_steps", cfg.get("grad_accum_steps", 1))
    return Split(int(micro), int(accum), int(fp.get("world_size", 1)))


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def choose(saved: Split, cfg: DistillConfig, world: int, checkpoint: str) -> Split:
    """The split of a run resumed on `world` ranks from a checkpoint written under `saved` (see the module docstring)."""
    t = cfg.train
    if t.allow_global_batch_change:
        return Split(t.micro_batch_size, t.grad_accum_steps, world)
    g = saved.global_batch
    if g % world:
        below, above = g // world * world, -(-g // world) * world
        nearest = " and ".join(str(n) for n in (below, above) if n > 0)
        ranks = ", ".join(str(d) for d in divisors(g) if d <= 4 * max(world, saved.world))
        raise UserError(
            f"--resume on {world} rank(s) cannot keep the global batch {g} of checkpoint {checkpoint} ({saved.text()}): "
            f"{g} is not a multiple of {world}; the nearest global batches {world} rank(s) can run are {nearest}: set "
            f"train.allow_global_batch_change=true with train.micro_batch_size x train.grad_accum_steps x {world} equal to "
            f"one of them (the LR schedule then continues by samples), or resume on a number of ranks dividing {g} ({ranks})")
    micro, accum = keep_global_batch(g, t.micro_batch_size, world)
    return Split(micro, accum, world)


def apply(cfg: DistillConfig, split: Split) -> DistillConfig:
    """The run config with the split's micro batch and accumulation (what this process runs; run_config.yaml records it)."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, micro_batch_size=split.micro, grad_accum_steps=split.accum))


def change_line(saved: Split, now: Split) -> str:
    """What the console and metrics.jsonl say at the resumed step."""
    parts = [f"resumed on {now.world} rank(s) (was {saved.world})"]
    parts.append(f"accumulation {saved.accum} -> {now.accum}" if saved.accum != now.accum else f"accumulation {now.accum}")
    if saved.micro != now.micro:
        parts.append(f"micro batch {saved.micro} -> {now.micro}")
    if saved.global_batch == now.global_batch:
        parts.append(f"same global batch {now.global_batch}")
    else:
        parts.append(f"global batch {saved.global_batch} -> {now.global_batch} (train.allow_global_batch_change; the LR "
                     "schedule continues by samples)")
    return ": ".join([parts[0], ", ".join(parts[1:])])


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The LR schedule in optimizer steps of the global batch `global_batch`: its length and warm-up."""

    total_steps: int
    warmup_steps: int
    global_batch: int

    def rescaled(self, global_batch: int) -> Schedule:
        """The same schedule in steps of another global batch: the same LR at the same sample."""
        f = self.global_batch / global_batch
        return Schedule(max(1, round(self.total_steps * f)), max(1, round(self.warmup_steps * f)), global_batch)

    def position(self, iteration: int, global_batch: int) -> int:
        """A position `iteration` of this schedule, in steps of `global_batch`."""
        return round(iteration * self.global_batch / global_batch)


def warmup_steps(cfg: DistillConfig, total_steps: int) -> int:
    return max(1, round(cfg.train.warmup_ratio * total_steps))  # as runtime.engine.ds_config_from


def epoch_micro_steps(n_samples: int, split: Split) -> int:
    """Micro batches per epoch per rank under `split` (data.stream.plan_rank's T)."""
    return math.ceil(n_samples / (split.world * split.micro))
