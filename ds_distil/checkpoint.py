"""Checkpoints: DeepSpeed's ZeRO checkpoint plus our trainer state, committed only when complete;
and the export of a checkpoint to a Hugging Face model directory.

Layout under RUN/checkpoints/:
    step00000100/            DeepSpeed's files (model states, each rank's optimizer partition)
        trainer_state.json   step, tokens, data-stream position, resolved config (rank 0)
        rng_rank{R}.pt       each rank's RNG states (dropout must resume exactly on every rank)
        COMPLETE             written last, after every rank has finished and files are synced
    latest                   the newest complete tag, replaced atomically (DeepSpeed's convention)

DeepSpeed itself writes `latest` from rank 0 without waiting for the other ranks' files, so we
save with save_latest=False and commit ourselves. A tag without COMPLETE (a run killed while
writing) is never resumed from and is removed by the next successful save.
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

from ds_distil.errors import UserError
from ds_distil.models import unpad_vocab

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
    engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False)  # ends with a barrier
    tag_dir = ckpt_dir / tag
    torch.save(rng_state(), tag_dir / f"rng_rank{rank}.pt")
    if rank == 0:
        tmp = tag_dir / "trainer_state.json.tmp"
        tmp.write_text(json.dumps(trainer_state, indent=1))
        tmp.replace(tag_dir / "trainer_state.json")
    dist.barrier()
    if rank == 0:
        _fsync_tree(tag_dir)
        (tag_dir / MARKER).write_text(json.dumps({"step": step, "world_size": dist.get_world_size()}))
        latest_tmp = ckpt_dir / "latest.tmp"
        latest_tmp.write_text(tag)
        latest_tmp.replace(ckpt_dir / "latest")
        _prune(ckpt_dir, keep)
    dist.barrier()
    return tag_dir


def _prune(ckpt_dir: Path, keep: int) -> None:
    complete = complete_tags(ckpt_dir)
    newest = complete[-1][0]
    for d in ckpt_dir.iterdir():
        m = TAG_RE.match(d.name)
        if m and not (d / MARKER).is_file() and int(m.group(1)) != newest:
            shutil.rmtree(d, ignore_errors=True)  # an interrupted save
    for _, tag in complete[: max(0, len(complete) - keep)]:
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)


def load(engine, run_dir: Path) -> dict | None:
    """Restore engine (model, optimizer, scheduler, loss scaler) and RNG from the newest complete
    checkpoint; returns the trainer state, or None when there is none."""
    import torch.distributed as dist

    ckpt_dir = run_dir / "checkpoints"
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    marker = json.loads((ckpt_dir / tag / MARKER).read_text())
    if marker["world_size"] != dist.get_world_size():
        raise UserError(
            f"{ckpt_dir / tag} was written by {marker['world_size']} ranks, this run has {dist.get_world_size()}; "
            "resume with the same number of ranks (ZeRO partitions optimizer state per rank), or to change size, "
            f"`ds-distil export --run {run_dir}` and start a new run with student.pretrained={run_dir}/student"
        )
    path, _ = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise UserError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}; it may be damaged: delete it to resume from an older one")
    rng_file = ckpt_dir / tag / f"rng_rank{dist.get_rank()}.pt"
    set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads((ckpt_dir / tag / "trainer_state.json").read_text())


def export_student(run_dir: Path, out: Path | None = None, tag: str | None = None) -> Path:
    """Consolidate a ZeRO checkpoint into RUN/student: config.json, model.safetensors, tokenizer files.
    Loads with `AutoModelForMaskedLM.from_pretrained(dir)` and nothing of ours."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    tag = tag or latest_tag(ckpt_dir)
    if tag is None:
        raise UserError(f"{run_dir} has no complete checkpoint to export; run `ds-distil distill --out {run_dir}` first")
    if not (ckpt_dir / tag / MARKER).is_file():
        raise UserError(f"checkpoint {ckpt_dir / tag} is incomplete (no {MARKER}); pick another tag")
    out = Path(out) if out else run_dir / "student"
    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    state = {k.removeprefix("model."): v for k, v in state.items()}
    config = AutoConfig.from_pretrained(str(run_dir / "student_config"))
    model = AutoModelForMaskedLM.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "lm_head.decoder.weight", "lm_head.decoder.bias"}
    if unexpected or set(missing) - tied:
        raise UserError(f"checkpoint {tag} does not match the student architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"))
    unpad_vocab(model, len(tokenizer))  # training may pad the vocabulary rows (perf.pad_vocab_multiple)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    (tmp / "ds_distil_export.json").write_text(json.dumps({"checkpoint": str(ckpt_dir / tag)}))
    from ds_distil.card import write_card

    write_card(tmp, run_dir, tag)  # README.md: the model card (ds_distil/card.py)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out
