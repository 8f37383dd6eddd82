"""The distillation loop: `fit(components)` trains a run that ds_distil/distill/setup.py has built.

An optimizer step is `DistillStep.window` over its micro batches (ds_distil/distill/step.py): teacher signal and
student at the masked positions only, the objective's terms per token of the whole global batch, DeepSpeed's backward
and step, no host sync. The loop accumulates
the step's statistics on the device; once per optimizer step the ranks exchange one small vector (the statistics,
a stop request) and the host reads it: the one sync, where DeepSpeed's own step (grad norm, overflow check)
synchronises anyway. Every `log.every_steps` it logs the total and each of the objective's terms; validation and
checkpoints are taken at optimizer-step boundaries, the checkpoint carrying the data position.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ds_distil.core import dist
from ds_distil.core.errors import UserError
from ds_distil.core.signals import EXIT_PREEMPTED, StopRequest, StopWhileWaiting
from ds_distil.distill.evaluate import Validator, console_line
from ds_distil.distill.objectives.base import Objective
from ds_distil.distill.step import DistillStep
from ds_distil.runtime.checkpoint import Checkpoints, latest_tag, tag_for
from ds_distil.runtime.engine import Dist, loss_scale
from ds_distil.runtime.flops import Arch, distill_step_flops
from ds_distil.runtime.metrics import Metrics
from ds_distil.schema.distill import DistillConfig

log = logging.getLogger(__name__)


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps
    micro_steps: int = 0  # micro batches consumed
    tokens: int = 0  # real (non-padding) tokens seen, all ranks
    samples: int = 0
    nonfinite_run: int = 0  # optimizer steps in a row with a non-finite loss (skipped by DeepSpeed)
    nonfinite_total: int = 0
    val: dict = field(default_factory=dict)  # the last validation: {"step": N, "val/mlm_loss": ...} (the model card reads it)
    data: dict = field(default_factory=dict)


@dataclass
class Components:
    """A distillation run, set up: everything the loop needs, nothing it builds. `setup()` makes the real one; a test
    hands in small fakes (an engine needs gradient_accumulation_steps, get_lr, get_global_grad_norm, skipped_steps
    and config; a stream state_dict, position, epoch_progress, seq_len, abandon; a step window and stat_names)."""

    cfg: DistillConfig
    dist: Dist
    engine: Any  # the DeepSpeed engine of the student (and of the objective's own parameters)
    stream: Any  # this rank's training batches with a position (data.stream.MLMStream)
    objective: Objective
    teacher: Any  # the teacher signal (distill.teacher)
    step: DistillStep
    validator: Validator | None
    checkpoints: Checkpoints
    metrics: Metrics
    state: TrainerState
    num_steps: int
    student_arch: Arch  # for the FLOP count
    peak_flops: float | None  # of the device, for MFU (None: unknown)
    device_stats: Any  # runtime.metrics.DeviceStats
    batches: Iterator[dict] | None = None  # default: iter(stream); a test may feed its own

    def __post_init__(self) -> None:
        if self.batches is None:
            self.batches = iter(self.stream)


def fit(c: Components) -> int:
    """Train to c.num_steps (or a stop signal); returns a process exit status (0, or EXIT_PREEMPTED)."""
    cfg, st = c.cfg, c.state
    names = c.step.stat_names
    stop_requested = StopRequest()
    acc = torch.zeros(len(names), dtype=torch.float64)
    t0, micro_in_window = time.perf_counter(), 0
    status = 0
    try:
        while st.step < c.num_steps:
            stats, micro, stop = optimizer_step(c, stop_requested)
            st.step += 1
            st.micro_steps += micro
            st.tokens += int(stats[names.index("tokens")])
            st.samples += int(stats[names.index("samples")])
            if stats[names.index("nonfinite")] > 0:
                st.nonfinite_run += 1
                st.nonfinite_total += 1
                log.warning("non-finite loss at step %d (%d step(s) in a row); DeepSpeed skipped the update", st.step, st.nonfinite_run)
                # a run shorter than max_nonfinite_steps whose every step failed must not end as if it had trained
                if st.nonfinite_run >= min(cfg.train.max_nonfinite_steps, c.num_steps):
                    raise UserError(
                        f"loss was NaN/inf for {st.nonfinite_run} optimizer steps in a row at step {st.step}; stopping "
                        "instead of burning compute: lower train.lr, use ds_configs/zero2-bf16.json instead of fp16, "
                        "or check the data"
                    )
            else:
                st.nonfinite_run = 0
                acc += stats
                micro_in_window += micro
            c.metrics.step(1, loss=f"{stats[0].item() / micro:.3f}")
            if st.step % cfg.log.every_steps == 0 or st.step == c.num_steps:
                log_window(c, acc, micro_in_window, time.perf_counter() - t0)
                acc.zero_()
                t0, micro_in_window = time.perf_counter(), 0
            stop = stop and st.step < c.num_steps  # at the end: just finish
            if validation_due(c):  # before the checkpoint, which then holds the figures
                validate(c)
            every = cfg.checkpoint.every_steps
            if stop or st.step == c.num_steps or (every and st.step % every == 0):
                st.data = c.stream.state_dict()
                c.checkpoints.save(st.step, trainer={k: v for k, v in asdict(st).items() if k != "data"}, data=st.data)
            if stop:
                log.warning("stop requested by signal: checkpoint %s written; exiting for requeue (--resume continues)", tag_for(st.step))
                status = EXIT_PREEMPTED
                break
    except StopWhileWaiting as e:  # a batch that never came: there is no step to finish, so nothing new to save
        c.stream.abandon()
        latest = latest_tag(c.checkpoints.run_dir / "checkpoints")
        log.warning("%s: stopping at step %d without a checkpoint; %s; exit %d", e, st.step,
                    f"--resume continues from {latest}" if latest else "no checkpoint exists yet", EXIT_PREEMPTED)
        status = EXIT_PREEMPTED
    except KeyboardInterrupt:  # SIGINT stops at once, wherever the run is: a stuck data-loader worker must not hold the exit
        c.stream.abandon()
        raise
    finally:
        stop_requested.close()
        c.metrics.close()
    return status


def optimizer_step(c: Components, stop_requested: StopRequest) -> tuple[torch.Tensor, int, bool]:
    """The micro batches of the next optimizer step (its accumulation window), trained on together; then the one
    exchange between ranks (with whether a stop was requested on this rank by then). Returns (the step's statistics
    summed over ranks and micro steps, micro steps, stop requested on any rank). Raises StopWhileWaiting when a stop
    was requested and a batch does not come within the grace period (before any of the step is computed)."""
    device = c.dist.device
    batches = []
    for _ in range(c.engine.gradient_accumulation_steps()):
        with stop_requested.waiting():
            batches.append(next(c.batches))
    step_acc = c.step.window(batches)
    exchange = torch.cat([step_acc.to(device), torch.tensor([float(stop_requested())], dtype=torch.float64, device=device)])
    exchange = dist.all_reduce(exchange).cpu()  # the sync
    return exchange[:-1], len(batches), bool(exchange[-1] > 0)


def log_window(c: Components, acc: torch.Tensor, micro: int, elapsed: float) -> None:
    """`acc`: the statistics summed over ranks and the window's `micro` (finite) micro steps; none (every step of the
    window skipped): the losses are logged as NaN, never as 0."""
    names, e, st = c.step.stat_names, c.engine, c.state
    mean = acc / micro if micro else torch.full_like(acc, float("nan"))
    micro = max(micro, 1)
    masked_per_rank_step = acc[names.index("masked")].item() / micro / c.dist.world_size
    flops = micro * distill_step_flops(c.student_arch, c.teacher.arch, c.cfg.train.micro_batch_size, c.stream.seq_len,
                                       masked_per_rank_step)
    values = {"loss/total": mean[names.index("total")].item()}
    values.update({t.log_key: mean[names.index(t.name)].item() for t in c.objective.terms})
    values.update({
        "lr": e.get_lr()[0],
        "throughput/tokens_per_s": acc[names.index("tokens")].item() / elapsed,
        "throughput/samples_per_s": acc[names.index("samples")].item() / elapsed,
        "train/tokens_seen": float(st.tokens),
        "train/epoch": c.stream.epoch_progress(),
        "train/overflow_skipped_steps": float(e.skipped_steps),
        "train/nonfinite_skipped_steps": float(st.nonfinite_total),
    })
    if c.step.last is not None:
        for key, pair in c.teacher.log_values(c.step.last).items():  # (sum, count) on this rank
            pair = dist.all_reduce(pair)
            values[key] = (pair[0] / pair[1].clamp(min=1)).item()
    norm = e.get_global_grad_norm()
    if norm is not None:
        values["grad_norm"] = float(norm)
    scale = loss_scale(e)
    if scale is not None:
        values["loss_scale"] = scale
    values["throughput/tflops_per_device"] = flops / elapsed / 1e12
    if c.peak_flops:
        values["throughput/mfu"] = flops / elapsed / c.peak_flops
    values.update(c.device_stats.read())
    c.metrics.scalars(st.step, values)
    if c.dist.rank == 0:
        terms = "".join(f"{t.label or t.name} {values[t.log_key]:.4f} | " for t in c.objective.terms)
        log.info("step %d/%d | loss %.4f | %slr %.2e | %.0f tokens/s%s", st.step, c.num_steps, values["loss/total"], terms,
                 values["lr"], values["throughput/tokens_per_s"], f" | MFU {values['throughput/mfu']:.1%}" if "throughput/mfu" in values else "")
        c.metrics.said()


def validation_due(c: Components) -> bool:
    # a function of the step alone, so every rank agrees (the evaluation ends in a collective);
    # also when stopping for a signal, so a preempted run logs what an uninterrupted one does
    every, step = c.cfg.log.eval_every_steps, c.state.step
    return c.validator is not None and (step == c.num_steps or bool(every and step % every == 0))


def validate(c: Components) -> None:
    values = c.validator(c.engine)
    c.state.val = {"step": c.state.step, **values}
    c.metrics.scalars(c.state.step, values)
    if c.dist.rank == 0:
        log.info("%s", console_line(c.state.step, values, c.objective.terms))
