"""Checkpoints of a training run (distillation and finetuning alike): DeepSpeed's ZeRO checkpoint plus the trainer's
state, committed only when complete (distillation's export of a checkpoint to a Hugging Face directory is
ds_distil/distill/export.py).

Layout under RUN/checkpoints/:
    step00000100/            DeepSpeed's files (model states, each rank's optimizer partition)
        trainer_state.json   the trainer's state (step, data position, ...), resolved config, resume fingerprint,
                             what else the command records (distill: the objective's declaration) (rank 0)
        rng_rank{R}.pt       each rank's RNG states (dropout must resume exactly on every rank)
        COMPLETE             written last (atomically), after every rank has finished and files are
                             synced: step, world size, and the size and sha256 of every file
    latest                   the newest complete tag, replaced atomically (DeepSpeed's convention)
    stepNNNNNNNN.damaged/    a complete checkpoint whose files no longer match COMPLETE, set aside
    universal/stepNNNNNNNN/  its universal form, made to resume it on another number of ranks or ZeRO stage
                             (ds_distil/runtime/universal.py); dropped once a newer checkpoint exists

DeepSpeed itself writes `latest` from rank 0 without waiting for the other ranks' files, so we
save with save_latest=False and commit ourselves. A tag without COMPLETE (a run killed while
writing) is never resumed from and is removed by the next successful save. --resume verifies
the newest complete checkpoint against its COMPLETE and falls back to the newest one that
matches, saying which. Loading never unpickles arbitrary objects (ds_distil.core.safe_load).

Distillation resumes any checkpoint on any number of ranks (elastic resume: `load` given the optimizer's parameter
groups): on the ranks and ZeRO stage that wrote it, DeepSpeed loads it as it is; otherwise through its universal form.
Each rank that existed gets its own RNG state back; a rank that did not gets one seeded by (train.seed, its rank, the
step), the same on every try. Finetuning resumes on the checkpoint's own number of ranks only (check_world_size).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ds_distil.core.dist import broadcast
from ds_distil.core.errors import UserError
from ds_distil.core.io import atomic_write, atomic_write_json
from ds_distil.core.rundir import RunDir, commit_on_rank0
from ds_distil.core.safe_load import UnsafeCheckpointError, weights_only_loads
from ds_distil.data.manifest import sha256_file
from ds_distil.data.stream import derive_seed
from ds_distil.runtime import universal

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
TAG_RE = re.compile(r"^step(\d{8,})$")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def complete_tags(ckpt_dir: Path) -> list[tuple[int, str]]:
    """(step, tag) of the complete checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for d in ckpt_dir.iterdir():
        m = TAG_RE.match(d.name)
        if m and (d / MARKER).is_file():
            found.append((int(m.group(1)), d.name))
    return sorted(found)


def latest_tag(ckpt_dir: Path) -> str | None:
    tags = complete_tags(ckpt_dir)
    return tags[-1][1] if tags else None


def _file_table(tag_dir: Path) -> dict:
    return {str(f.relative_to(tag_dir)): {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
            for f in sorted(tag_dir.rglob("*")) if f.is_file() and f.name != MARKER}


def zero_stage(tag_dir: Path) -> int:
    """The ZeRO stage a complete checkpoint was written under."""
    return _stage(json.loads((tag_dir / MARKER).read_text()))


def _stage(marker: dict) -> int:
    """COMPLETE's ZeRO stage; 2 for a checkpoint written before COMPLETE named it (every one was ZeRO-2 then)."""
    stage = marker.get("zero_stage", 2)
    return stage if stage in (0, 1, 2) else 2


def verify(tag_dir: Path, world_size: int | None = None) -> str | None:
    """What is wrong with a complete checkpoint (its files against COMPLETE), or None if nothing."""
    try:
        marker = json.loads((tag_dir / MARKER).read_text())
    except (OSError, ValueError) as e:
        return f"its {MARKER} is unreadable ({e})"
    if not isinstance(marker, dict):
        return f"its {MARKER} is not a record"
    ranks = marker.get("world_size", 1)
    ranks = ranks if isinstance(ranks, int) and ranks >= 1 else 1
    partitioned = _stage(marker) != 0
    # what every checkpoint must hold, whatever COMPLETE lists: the trainer state, each rank's RNG and (under ZeRO)
    # optimizer partition, the model states (DeepSpeed's file names; without ZeRO they hold the optimizer state)
    needed = ["trainer_state.json", "mp_rank_00_model_states.pt", *(f"rng_rank{r}.pt" for r in range(ranks))]
    missing = [n for n in needed if not (tag_dir / n).is_file()]
    missing += [f"rank {r}'s optimizer states (zero_pp_rank_{r}_mp_rank_00_optim_states.pt)" for r in range(ranks)
                if partitioned and not any(tag_dir.glob(f"*zero_pp_rank_{r}_mp_rank_00_optim_states.pt"))]
    if missing:  # every one named: a checkpoint of many ranks may miss the files of several
        return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
    files = marker.get("files")
    if files is None:  # written before COMPLETE carried checksums
        return None
    if not isinstance(files, dict):
        return f"its {MARKER} lists no files"
    root = tag_dir.resolve()
    for name in files:  # never look outside the checkpoint for a name its record gives
        if Path(name).is_absolute() or ".." in Path(name).parts or not (tag_dir / name).resolve().is_relative_to(root):
            return f"its {MARKER} names a file outside the checkpoint ({name})"
    for name, want in files.items():
        f = tag_dir / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != want["bytes"]:
            return f"{name} has {f.stat().st_size} bytes, {want['bytes']} when written (truncated?)"
    for name, want in files.items():
        if sha256_file(tag_dir / name) != want["sha256"]:
            return f"{name} differs from what was written (sha256)"
    return None


def choose_tag(run_dir: Path, set_aside: bool = True) -> tuple[str | None, list[str]]:
    """The newest complete checkpoint that verifies, and a line per newer one that did not (set aside
    as stepN.damaged when `set_aside`, so that no later save or export takes it for good)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    notes = []
    for _, tag in reversed(complete_tags(ckpt_dir)):
        problem = verify(ckpt_dir / tag)
        if problem is None:
            return tag, notes
        where = ""
        if set_aside:
            aside = ckpt_dir / f"{tag}.damaged"
            shutil.rmtree(aside, ignore_errors=True)
            (ckpt_dir / tag).rename(aside)
            where = f", set aside as {aside.name}"
        notes.append(f"checkpoint {tag} is damaged: {problem}{where}")
    return None, notes


def _fsync_tree(path: Path) -> None:
    for f in sorted(path.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, run_dir: Path, step: int, trainer_state: dict, keep: int) -> Path:
    """Every rank calls this. Returns the tag directory once it is complete and committed."""
    import torch.distributed as dist

    ckpt_dir = run_dir / "checkpoints"
    tag = tag_for(step)
    rank = dist.get_rank()
    tag_dir = ckpt_dir / tag
    if rank == 0 and tag_dir.exists():  # an interrupted save of this step, or one set aside: start it clean
        shutil.rmtree(tag_dir)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False)  # ends with a barrier
    torch.save(rng_state(), tag_dir / f"rng_rank{rank}.pt")
    if rank == 0:
        atomic_write_json(tag_dir / "trainer_state.json", trainer_state)
    dist.barrier()
    if rank == 0:
        _fsync_tree(tag_dir)
        marker = {"step": step, "world_size": dist.get_world_size(), "zero_stage": engine.zero_optimization_stage(),
                  "files": _file_table(tag_dir)}
        atomic_write_json(tag_dir / MARKER, marker, fsync=True)
        atomic_write(ckpt_dir / "latest", tag)
        _prune(ckpt_dir, keep)
    dist.barrier()
    return tag_dir


def _prune(ckpt_dir: Path, keep: int) -> None:
    keep = max(keep, 1)  # the newest complete checkpoint is never deleted (config refuses keep < 1 too)
    complete = complete_tags(ckpt_dir)
    newest = complete[-1][0]
    for d in ckpt_dir.iterdir():
        m = TAG_RE.match(d.name)
        if m and not (d / MARKER).is_file() and int(m.group(1)) != newest:
            shutil.rmtree(d, ignore_errors=True)  # an interrupted save
    for _, tag in complete[: max(0, len(complete) - keep)]:
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
    converted = ckpt_dir / universal.UNIVERSAL
    if converted.is_dir():  # universal forms of older checkpoints (and any half-made one): the newest resumes without them
        for d in converted.iterdir():
            if d.name != tag_for(newest):
                shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)


def written_by(run_dir: Path, tag: str) -> tuple[int, int]:
    """(ranks, ZeRO stage) that wrote complete checkpoint `tag`."""
    marker = json.loads((run_dir / "checkpoints" / tag / MARKER).read_text())
    return int(marker.get("world_size", 1)), _stage(marker)


def check_world_size(run_dir: Path, tag: str, world_size: int) -> None:
    """Refuse a checkpoint of another world size (a command without elastic resume: finetune, whose fingerprint
    refuses it first, naming the run's own settings)."""
    ranks, _ = written_by(run_dir, tag)
    if ranks != world_size:
        raise UserError(
            f"{run_dir / 'checkpoints' / tag} was written by {ranks} ranks, this run has {world_size}; "
            "resume with the same number of ranks (ZeRO partitions optimizer state per rank)"
        )


def needs_universal(run_dir: Path, tag: str, world_size: int, stage: int) -> bool:
    """Whether an engine of `world_size` ranks under ZeRO stage `stage` loads checkpoint `tag` through its universal form:
    a partitioned checkpoint on other ranks or another stage; an unpartitioned one (stage 0) under ZeRO. A stage-0
    checkpoint into a stage-0 engine loads as it is, on any ranks."""
    ranks, saved = written_by(run_dir, tag)
    return (saved, stage) != (0, 0) and (ranks != world_size or saved != stage)


def load(engine, run_dir: Path, tag: str, group_names: list[list[str]] | None = None, seed: int = 0) -> dict:
    """Restore engine (model, optimizer, scheduler, loss scaler) and RNG from checkpoint `tag` (chosen and verified by
    choose_tag); returns its trainer state. With `group_names` (the trained parameters by optimizer group:
    engine.param_group_names), on any number of ranks and ZeRO stage (distill), `seed` (train.seed) seeding the RNG of
    a rank the checkpoint has none of; without (finetune), on the checkpoint's own number of ranks only."""
    import torch.distributed as dist

    ckpt_dir = run_dir / "checkpoints"
    rank, world = dist.get_rank(), dist.get_world_size()
    state = json.loads((ckpt_dir / tag / "trainer_state.json").read_text())
    if group_names is None:
        check_world_size(run_dir, tag, world)
    if group_names is not None and needs_universal(run_dir, tag, world, engine.zero_optimization_stage()):
        ranks, stage = written_by(run_dir, tag)
        error = None
        if rank == 0:  # one process converts; the others wait for the outcome, whatever it is
            try:
                if not universal.ready(ckpt_dir, tag):
                    log.info("converting checkpoint %s (%d rank(s), ZeRO stage %d) to its universal form for %d rank(s), "
                             "ZeRO stage %d", tag, ranks, stage, world, engine.zero_optimization_stage())
                universal.prepare(ckpt_dir, tag, stage, group_names)
            except UnsafeCheckpointError as e:
                error = str(e)
            except Exception as e:  # a one-line error on every rank instead of a traceback on one and a hang on the others
                log.exception("converting checkpoint %s failed", tag)
                error = (f"cannot convert checkpoint {ckpt_dir / tag} ({ranks} rank(s), ZeRO stage {stage}) for "
                         f"{world} rank(s): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; resume on "
                         f"{ranks} rank(s), or delete it to resume from an older one")
        error = broadcast([error])[0]
        if error:
            raise UserError(error)
        universal.load(engine, ckpt_dir, tag, group_names)
    else:
        with weights_only_loads(ckpt_dir / tag):
            path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise UserError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}; it may be damaged: delete it to resume "
                            "from an older one")
    rng_file = ckpt_dir / tag / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        with weights_only_loads(rng_file):
            set_rng_state(torch.load(rng_file, weights_only=True))
    else:  # a rank the checkpoint's run did not have: seeded by what it is, the same on every try
        seeded = derive_seed(seed, "resumed-rank", rank, state["trainer"]["step"])
        random.seed(seeded)
        np.random.seed(seeded % 2**32)
        torch.manual_seed(seeded % 2**63)
    return state


class Checkpoints:
    """The loop's checkpoints of one run. `save(step, trainer=..., data=...)`, called on every rank, writes a complete
    checkpoint of the engine, the loop's state and the data position, with what every checkpoint of the run records
    beside them (`record`: the resolved config, the resume fingerprint, distill's objective declaration). The first
    save of a run still in its staging directory (distill --overwrite) swaps the new run in for the old one (core.rundir)."""

    def __init__(self, engine, run: RunDir, rank: int, keep: int, record: dict):
        self.engine, self.run, self.rank, self.keep, self.record = engine, run, rank, keep, record

    @property
    def run_dir(self) -> Path:
        return self.run.path

    def save(self, step: int, trainer: dict, data: dict) -> Path:
        path = save(self.engine, self.run.path, step, {"trainer": trainer, "data": data, **self.record}, self.keep)
        if self.run.staging:  # --overwrite: the new run replaces the old one once it can be resumed
            commit_on_rank0(self.run, self.rank)
            path = self.run.path / "checkpoints" / path.name
            if self.rank == 0:
                log.info("--overwrite: the new run now is %s (the old one was replaced at its first checkpoint)", self.run.path)
        return path
