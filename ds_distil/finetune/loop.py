"""The finetuning loop: `fit(trainer)` trains to the step count, or until a stop signal, from a fresh start or from a
checkpoint, and a resumed run continues exactly as an uninterrupted one would (the same batches, dropout, optimizer
and schedule: bit-identical weights and logged figures).

Per optimizer step: the micro batches of this rank (features.epoch_batches: a function of the seed, the epoch and the
ranks), DeepSpeed's backward and step. Every `log_every_steps` the global batch's mean loss goes to TensorBoard and
metrics.jsonl; every `eval_every_steps` the validation split is scored (with train.keep=best, a better model's weights
are kept as a snapshot); every `checkpoint.every_steps`, and when a stop signal came (SIGTERM, SLURM's SIGUSR1), a
complete checkpoint is written (runtime/checkpoint.py): the engine (model, optimizer, scheduler), each rank's RNG,
the data position and this loop's state. A stop ends the step, checkpoints and returns EXIT_PREEMPTED.

On several ranks, the ranks agree on a stop once per optimizer step (one small all-reduce that also carries the
step's loss); on one rank nothing is synchronised per step, and the progress line reads the latest loss only when
it is shown.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ds_distil.core.dist import all_gather_objects
from ds_distil.core.signals import EXIT_PREEMPTED, StopRequest
from ds_distil.data.examples import Task
from ds_distil.finetune.features import collate, epoch_batches
from ds_distil.finetune.inference import argmax, infer
from ds_distil.finetune.scoring import evaluate
from ds_distil.finetune.task_kd import TaskKD
from ds_distil.runtime.checkpoint import Checkpoints, complete_tags, tag_for
from ds_distil.runtime.engine import Dist
from ds_distil.runtime.metrics import Metrics
from ds_distil.schema.finetune import FinetuneConfig

log = logging.getLogger(__name__)

BEST = "best"  # checkpoints/best/stepN.safetensors: train.keep=best's snapshots of the best model so far


@dataclass
class FinetuneState:
    """What a checkpoint holds of the loop (beside the engine and the RNG), and what results.json reports of training."""

    step: int = 0  # optimizer steps
    samples: int = 0  # training rows trained on, all ranks
    train_s: float = 0.0  # training time of the sessions before this one (no set-up, evaluation or checkpoints)
    window: list = field(default_factory=list)  # per rank: [loss sum, micro batches] of the logging window open at the checkpoint
    best: dict = field(default_factory=dict)  # the best validation so far (train.keep=best): {"step", "score", "macro_f1"}
    curve: list = field(default_factory=list)  # every validation during training: {"step", "score", "macro_f1"}
    resumed_at: list = field(default_factory=list)  # the steps this run was resumed from
    epoch: int = 0  # the data position: epoch, and micro batches of it consumed (every rank the same)
    batch: int = 0

    POSITION = ("epoch", "batch")

    def trainer(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.POSITION}

    def position(self) -> dict:
        return {k: getattr(self, k) for k in self.POSITION}


@dataclass
class Trainer:
    """A finetuning run, set up (finetune/train.py): everything `fit` needs, nothing it builds."""

    cfg: FinetuneConfig
    d: Dist
    task: Task
    engine: Any  # the DeepSpeed engine of the classifier
    pad_id: int
    feats: dict[str, list[dict]]
    num_steps: int
    eval_every: int  # 0: no validation during training
    checkpoint_every: int  # 0: only when stopped
    checkpoints: Checkpoints
    metrics: Metrics
    state: FinetuneState
    stop: StopRequest
    eval_model: torch.nn.Module  # what every evaluation scores and DIR/model holds: the model in fp32 (fp32_model)
    kd: TaskKD | None = None  # task distillation's targets and loss (finetune/task_kd.py); None: the model's own loss

    @property
    def train_rows(self) -> list[dict]:
        return training_rows(self.feats)

    @property
    def best_dir(self) -> Path:
        return self.checkpoints.run_dir / "checkpoints" / BEST


def training_rows(feats: dict[str, list[dict]]) -> list[dict]:
    """What the loop trains on: the labelled training rows, then the transfer rows (task distillation), if any."""
    return feats["train"] + feats.get("transfer", [])


def fp32_model(engine) -> torch.nn.Module:
    """The model in fp32: the engine's own module when it trains in fp32; else a copy in fp32 (refreshed from the
    engine's weights before each use, `current`), so that validation, train.keep=best's choice, the final scores and
    DIR/model all see the same numbers, whatever precision the run trains in."""
    module = engine.module
    if all(p.dtype == torch.float32 for p in module.parameters()):
        return module
    device = next(module.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # its random init draws nothing of the run's
        return type(module)(module.config).to(device)


def current(t: Trainer) -> torch.nn.Module:
    """t.eval_model holding the engine's weights now."""
    if t.eval_model is not t.engine.module:
        t.eval_model.load_state_dict(t.engine.module.state_dict())  # copied into the fp32 parameters
    return t.eval_model


class Clock:
    """Training time: wall time less what `paused()` brackets (evaluations, checkpoints)."""

    def __init__(self):
        self.t0, self.paused_s = time.perf_counter(), 0.0

    @contextmanager
    def paused(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - t

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 - self.paused_s


def fit(t: Trainer) -> int:
    """Train to t.num_steps (or a stop signal); returns a process exit status (0, or EXIT_PREEMPTED)."""
    cfg, st, d = t.cfg, t.state, t.d
    train, fn = t.train_rows, collate(t.pad_id)
    loss_sum, micro = torch.tensor(st.window[d.rank][0] if st.window else 0.0, device=d.device), st.window[d.rank][1] if st.window else 0
    step_loss, step_micro = torch.zeros((), device=d.device), 0
    batches = _micro_batches(t)
    clock = Clock()
    if _agree(torch.zeros((), device=d.device), t.stop(), d)[0]:  # a signal during set-up: nothing trained, nothing to save
        log.warning("stop requested by signal before the first step; exiting for requeue (--resume starts %s)",
                    f"from step {st.step}" if st.step else "from the beginning")
        return EXIT_PREEMPTED
    while st.step < t.num_steps:
        rows = next(batches)
        batch = fn([train[i] for i in rows])
        index = batch.pop("index")
        batch = {k: v.to(d.device) for k, v in batch.items()}
        loss = t.engine(**batch).loss if t.kd is None else t.kd.loss(t.engine, batch, index)
        t.engine.backward(loss)
        boundary = t.engine.is_gradient_accumulation_boundary()
        t.engine.step()
        step_loss += loss.detach()
        step_micro += 1
        st.samples += len(rows) * d.world_size  # DistributedSampler gives every rank as many rows
        if not boundary:
            continue
        st.step += 1
        stop, latest = _agree(step_loss / step_micro, t.stop(), d)
        loss_sum += step_loss
        micro += step_micro
        step_loss, step_micro = torch.zeros((), device=d.device), 0
        t.metrics.step(1, loss=lambda v=latest: f"{v.item():.4f}")  # read when the progress line is shown, not per step
        if st.step % cfg.log_every_steps == 0 or st.step == t.num_steps:
            torch.distributed.all_reduce(loss_sum)  # every rank's micro batches: the global batch's mean, whatever the ranks
            t.metrics.scalars(st.step, {"loss/train": loss_sum.item() / (micro * d.world_size), "lr": t.engine.get_lr()[0]})
            loss_sum.zero_()
            micro = 0
        stop = stop and st.step < t.num_steps  # at the end: just finish
        if t.eval_every and st.step % t.eval_every == 0 and st.step < t.num_steps:
            with clock.paused():
                validate(t)
        if stop or (t.checkpoint_every and st.step % t.checkpoint_every == 0 and st.step < t.num_steps):
            with clock.paused():
                save(t, loss_sum, micro, st.train_s + clock.elapsed())
        if stop:
            log.warning("stop requested by signal: checkpoint %s written; exiting for requeue (--resume continues)", tag_for(st.step))
            return EXIT_PREEMPTED
    if d.device.type == "cuda":
        torch.cuda.synchronize(d.device)
    st.train_s += clock.elapsed()
    return 0


def _micro_batches(t: Trainer):
    """This rank's micro batches from the state's data position on, epoch after epoch; the position moves as they go."""
    st, tr = t.state, t.cfg.train
    while True:
        order = epoch_batches(len(t.train_rows), tr.micro_batch_size, tr.seed, st.epoch, t.d.rank, t.d.world_size)
        while st.batch < len(order):
            st.batch += 1
            yield order[st.batch - 1]
        st.epoch, st.batch = st.epoch + 1, 0


def _agree(step_loss: torch.Tensor, stop: bool, d: Dist) -> tuple[bool, torch.Tensor]:
    """(whether any rank was asked to stop, the step's mean loss over the ranks): on several ranks one all-reduce; on
    one, nothing to exchange and nothing read from the device."""
    if d.world_size == 1:
        return stop, step_loss
    both = torch.stack([step_loss.float(), torch.tensor(float(stop), device=d.device)])
    torch.distributed.all_reduce(both)
    return bool(both[1] > 0), both[0] / d.world_size


def validate(t: Trainer) -> None:
    """Score the validation split mid-training: console, TensorBoard valid/*, metrics.jsonl, the curve; with
    train.keep=best, a better model than the best so far is kept (a snapshot of its weights)."""
    st, d = t.state, t.d
    model = current(t)
    logits = infer(model, t.feats["valid"], t.cfg.eval_batch_size, t.pad_id, d.rank, d.world_size, d.device, "evaluate valid")
    if d.rank != 0:
        return
    ev = evaluate(t.task, argmax(logits), t.feats["valid"])
    point = {"step": st.step, "score": ev["score"], "macro_f1": ev["macro_f1"]}
    st.curve.append(point)
    t.metrics.scalars(st.step, split_scalars("valid", ev))
    better = t.cfg.train.keep == "best" and (not st.best or ev["score"] > st.best["score"])
    if better:
        save_snapshot(model, t.best_dir / f"{tag_for(st.step)}.safetensors")
        st.best = point
    log.info("step %d/%d: valid %s %.4f | macro-F1 %.4f%s", st.step, t.num_steps, t.task.metric, ev["score"], ev["macro_f1"],
             " | best so far: kept (train.keep=best)" if better else "")


def split_scalars(split: str, ev: dict) -> dict[str, float]:
    """TensorBoard tags of one split's evaluation: SPLIT/score (the task metric), SPLIT/accuracy, SPLIT/macro_f1."""
    return {f"{split}/{k}": ev[k] for k in ("score", "accuracy", "macro_f1")}


def save(t: Trainer, loss_sum: torch.Tensor, micro: int, train_s: float) -> None:
    """A complete checkpoint (every rank calls this): the engine, the RNG, the data position and the loop's state, with
    each rank's open logging window, so that a resumed run logs what an uninterrupted one does."""
    st = t.state
    window = all_gather_objects([loss_sum.item(), micro])
    t.checkpoints.save(st.step, trainer={**st.trainer(), "window": window, "train_s": train_s}, data=st.position())
    if t.d.rank == 0:
        prune_snapshots(t.checkpoints.run_dir, st.best)


def save_snapshot(model: torch.nn.Module, path: Path) -> None:
    """The (fp32) model's weights, written whole (safetensors, then renamed)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)


def snapshot_of(run_dir: Path, best: dict) -> Path | None:
    """The snapshot file of the best model `best` names, if it is there."""
    path = run_dir / "checkpoints" / BEST / f"{tag_for(best['step'])}.safetensors" if best else None
    return path if path is not None and path.is_file() else None


def prune_snapshots(run_dir: Path, best: dict) -> None:
    """Delete the snapshots no checkpoint kept and no later validation names (a run resumed from an older checkpoint
    finds its best model's snapshot)."""
    ckpt = run_dir / "checkpoints"
    wanted = {best.get("step")}
    for _, tag in complete_tags(ckpt):
        try:
            wanted.add(json.loads((ckpt / tag / "trainer_state.json").read_text())["trainer"]["best"].get("step"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    for f in (ckpt / BEST).glob("step*.safetensors") if (ckpt / BEST).is_dir() else []:
        if int(f.name[4:12]) not in wanted:
            f.unlink(missing_ok=True)


def banner_line(t: Trainer) -> str:
    """When the loop validates and checkpoints, for the console at start."""
    every, ckpt = t.eval_every, t.checkpoint_every
    keep = t.cfg.train.keep
    return (f"validation {'every %d steps and ' % every if every else ''}at the end; checkpoints "
            f"{'every %d steps' % ckpt if ckpt else 'only when stopped by a signal'} (kept until the run ends); "
            f"train.keep={keep}: DIR/model is the {'model of the best validation score' if keep == 'best' else 'model at the end'}")

