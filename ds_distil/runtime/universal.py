"""Checkpoints any number of ranks can read: DeepSpeed's universal checkpoint, and what it does not cover.

A ZeRO checkpoint holds each rank's partition of the fp32 master weights and Adam moments; DeepSpeed loads it only on
as many ranks as wrote it (engine._load_zero_checkpoint: "Automatic adjustment of ZeRO's optimizer state partitioning
with a new world size is not currently supported"). Its *universal* form (deepspeed/checkpoint/ds_to_universal.py) holds
every parameter whole, one directory each (`zero/<name>/fp32.pt, exp_avg.pt, exp_avg_sq.pt, step.pt`, and
`zero/optimizer_state.pt` with the loss scaler and the param groups), and an engine built with
`"checkpoint": {"load_universal": true}` loads it on any number of ranks, cutting its own partitions. What we use:

    from \\ to          ZeRO-1/2 (any ranks, fp32/bf16/fp16)         stage 0 (one fp32 rank, runtime/optimizer.py)
    ZeRO-1/2           ds_to_universal -> DeepSpeed's universal load  ds_to_universal -> `load_into_stage0` (ours)
    stage 0            `stage0_to_universal` (ours) -> DeepSpeed's     not partitioned: DeepSpeed loads it on any ranks

DeepSpeed covers neither side of stage 0 (DeepSpeed #7200): without ZeRO the model states file holds the whole model
and the torch optimizer's state_dict, whose parameters are numbered in the optimizer's order (engine.param_groups);
`stage0_to_universal` writes them in the universal layout, `load_into_stage0` reads the universal layout into a torch
optimizer. Weights, fp32 master weights, Adam moments and step, the loss scaler, the LR schedule and DeepSpeed's step
counters come back exactly; parameters without optimizer state (frozen ones) and buffers come from the model states.

The universal form of checkpoint TAG is made once, by rank 0, into CKPT/universal/TAG through a temporary directory
renamed when complete (with a record of the COMPLETE it was made from): a run killed while converting leaves no
half-made copy that a later resume would take for good. It is a cache of the checkpoint, dropped once a newer
checkpoint exists (runtime.checkpoint._prune).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch

from ds_distil.core.io import atomic_write_json
from ds_distil.core.safe_load import weights_only_loads

log = logging.getLogger(__name__)

UNIVERSAL = "universal"  # CKPT/universal/TAG
RECORD = "UNIVERSAL.json"
MODEL_STATES = "mp_rank_00_model_states.pt"
STATES = ("fp32", "exp_avg", "exp_avg_sq")


def universal_dir(ckpt_dir: Path, tag: str) -> Path:
    return Path(ckpt_dir) / UNIVERSAL / tag


def _source_id(tag_dir: Path) -> str:
    """What a universal copy was made from: the sha256 of the source's COMPLETE (which lists every file's sha256)."""
    return hashlib.sha256((tag_dir / "COMPLETE").read_bytes()).hexdigest()


def ready(ckpt_dir: Path, tag: str) -> bool:
    """A complete universal copy of checkpoint `tag` exists (made from the checkpoint as it is now)."""
    record = universal_dir(ckpt_dir, tag) / RECORD
    try:
        return json.loads(record.read_text()).get("source") == _source_id(Path(ckpt_dir) / tag)
    except (OSError, ValueError):
        return False


def prepare(ckpt_dir: Path, tag: str, stage: int, group_names: list[list[str]]) -> Path:
    """Rank 0: the universal form of checkpoint `tag` (written under ZeRO stage `stage`), made unless a complete one
    exists. `group_names`: the trained parameters' names in the optimizer's order (engine.param_group_names), which a
    stage-0 checkpoint numbers them by."""
    ckpt_dir = Path(ckpt_dir)
    out = universal_dir(ckpt_dir, tag)
    if ready(ckpt_dir, tag):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{tag}.tmp-*"):  # what a conversion killed half-way left
        shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)  # made from an older state of this tag (set aside and rewritten)
    tmp = out.parent / f".{tag}.tmp-{os.getpid()}"
    source = ckpt_dir / tag
    with weights_only_loads(source):
        if stage == 0:
            stage0_to_universal(source, tmp, group_names)
        else:
            _ds_to_universal(source, tmp)
    atomic_write_json(tmp / RECORD, {"source": _source_id(source), "tag": tag, "zero_stage": stage}, fsync=True)
    tmp.rename(out)
    return out


def _ds_to_universal(source: Path, out: Path) -> None:
    """DeepSpeed's converter, in this process (no worker pool), its console output kept for a failure."""
    import contextlib
    import io

    from deepspeed.checkpoint.ds_to_universal import main

    args = SimpleNamespace(input_folder=str(source), output_folder=str(out), num_extract_workers=1, num_merge_workers=1,
                           keep_temp_folder=False, strict=True,
                           inject_missing_state=True)  # our checkpoints carry no UNIVERSAL_CHECKPOINT_INFO: none is needed
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            main(args)
    except BaseException:
        log.error("DeepSpeed's ds_to_universal failed on %s; its output:\n%s", source, buf.getvalue()[-4000:])
        raise
    stray = out.parent / "latest_universal"  # the converter's pointer beside its output: we name tags ourselves
    stray.unlink(missing_ok=True)


def stage0_to_universal(source: Path, out: Path, group_names: list[list[str]]) -> None:
    """A checkpoint written without ZeRO (the model states hold the module and the torch optimizer's state_dict) in
    the universal layout DeepSpeed's ZeRO engines load."""
    import deepspeed
    from deepspeed.checkpoint.constants import DS_VERSION, PARAM, PARAM_GROUPS

    states = torch.load(source / MODEL_STATES, map_location="cpu", weights_only=True)
    module, optim = states["module"], states["optimizer"]
    numbered = [name for names in group_names for name in names]
    if len(optim["state"]) > len(numbered) or len(optim["param_groups"]) != len(group_names):
        raise ValueError(f"{source}: its optimizer state has {len(optim['param_groups'])} groups of "
                         f"{[len(g['params']) for g in optim['param_groups']]} parameters, this model "
                         f"{[len(n) for n in group_names]}")
    zero = out / "zero"
    for group, names in zip(optim["param_groups"], group_names):
        for index, name in zip(group["params"], names):
            state = optim["state"].get(index)
            d = zero / name
            d.mkdir(parents=True, exist_ok=True)
            torch.save({PARAM: module[name].detach().float().clone()}, d / "fp32.pt")
            if state is None:  # a parameter the optimizer has not stepped yet
                continue
            torch.save({PARAM: state["exp_avg"].detach().float().clone()}, d / "exp_avg.pt")
            torch.save({PARAM: state["exp_avg_sq"].detach().float().clone()}, d / "exp_avg_sq.pt")
            torch.save(state["step"].clone() if torch.is_tensor(state["step"]) else state["step"], d / "step.pt")
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optim["param_groups"]]
    torch.save({DS_VERSION: deepspeed.__version__, PARAM_GROUPS: groups}, zero / "optimizer_state.pt")
    shutil.copy2(source / MODEL_STATES, out / MODEL_STATES)  # the LR schedule, DeepSpeed's counters


def load(engine, ckpt_dir: Path, tag: str, group_names: list[list[str]]) -> None:
    """Load the universal form of checkpoint `tag` (made by `prepare`) into `engine`, whatever its ranks: a ZeRO engine
    built with load_universal through DeepSpeed; a stage-0 one here."""
    udir = universal_dir(ckpt_dir, tag)
    with weights_only_loads(udir):
        if engine.zero_optimization_stage() == 0:
            load_into_stage0(engine, udir, group_names)
        else:
            path, _ = engine.load_checkpoint(str(udir.parent), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
            if path is None:
                raise RuntimeError(f"DeepSpeed could not load the universal checkpoint {udir}")
        _untrained_from_states(engine, torch.load(udir / MODEL_STATES, map_location="cpu", weights_only=True)["module"])


def load_into_stage0(engine, udir: Path, group_names: list[list[str]]) -> None:
    """The universal layout into an engine without ZeRO: the module's weights (fp32) and the torch optimizer's state,
    numbered in its own order; the LR schedule and DeepSpeed's counters from the model states."""
    from deepspeed.checkpoint.constants import PARAM, PARAM_GROUPS

    zero = udir / "zero"
    states = torch.load(udir / MODEL_STATES, map_location="cpu", weights_only=True)
    params = dict(engine.module.named_parameters())
    state, numbered = {}, 0
    saved_groups = torch.load(zero / "optimizer_state.pt", map_location="cpu", weights_only=True)[PARAM_GROUPS]
    groups = []
    for names, saved in zip(group_names, saved_groups):
        ids = []
        for name in names:
            d = zero / name
            with torch.no_grad():
                params[name].copy_(torch.load(d / "fp32.pt", map_location="cpu", weights_only=True)[PARAM].view_as(params[name]))
            if (d / "exp_avg.pt").is_file():
                step = torch.load(d / "step.pt", map_location="cpu", weights_only=True)
                state[numbered] = {
                    "step": step if torch.is_tensor(step) else torch.tensor(float(step)),
                    **{key: torch.load(d / f"{key}.pt", map_location="cpu", weights_only=True)[PARAM].view_as(params[name])
                       for key in ("exp_avg", "exp_avg_sq")}}
            ids.append(numbered)
            numbered += 1
        groups.append({**saved, "params": ids})
    current = engine.optimizer.state_dict()["param_groups"]
    for g, now in zip(groups, current):  # the run's own settings of the torch optimizer (fused, foreach, ...) stay
        for key in now:
            if key not in ("params", "lr", "betas", "eps", "weight_decay", "step"):
                g[key] = now[key]
    engine.optimizer.load_state_dict({"state": state, "param_groups": groups})
    if engine.lr_scheduler is not None and states.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(states["lr_scheduler"])
    engine.global_steps = states["global_steps"]
    engine.global_samples = states.get("global_samples", engine.global_steps * engine.train_batch_size())
    engine.skipped_steps = states["skipped_steps"]


def _untrained_from_states(engine, module_states: dict) -> None:
    """Parameters the optimizer does not hold (frozen ones) and buffers, from the checkpoint's model states: the
    universal form carries only what the optimizer trains."""
    trained = {name for name, p in engine.module.named_parameters() if p.requires_grad}
    rest = {k: v for k, v in module_states.items() if k not in trained and k in engine.module.state_dict()}
    if rest:
        engine.module.load_state_dict(rest, strict=False)


def full_state(engine) -> dict:
    """Every trained parameter's weights, fp32 master weights, Adam moments and step, gathered whole whatever the ranks
    and ZeRO stage (a collective: every rank calls it), with the loss scaler, the LR schedule and DeepSpeed's counters.
    What a checkpoint must bring back; the tests compare it bit for bit before a save and after a load."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    zero = engine.zero_optimization_stage() > 0
    if zero:
        # DeepSpeed 0.19.8 links each parameter to its optimizer state after the first group's first step only, so the
        # other groups' parameters have none linked (safe_get_full_optimizer_state raises): link them all (views only)
        from deepspeed.utils.mixed_precision_linkage import lazy_init_hp_params_optimizer_state

        opt = engine.optimizer
        for i, group in enumerate(opt.bit16_groups):
            if opt.optimizer.state.get(opt.single_partition_of_fp32_groups[i]):
                lazy_init_hp_params_optimizer_state(group, opt.single_partition_of_fp32_groups[i], opt.optimizer.state)
    out = {}
    for name, p in engine.module.named_parameters():
        if not p.requires_grad:
            continue
        if zero:
            entry = {"weight": p.detach().cpu().clone(), "fp32": safe_get_full_fp32_param(p).cpu().clone(),
                     **{k: safe_get_full_optimizer_state(p, k).cpu().clone() for k in ("exp_avg", "exp_avg_sq")}}
            step = engine.optimizer.optimizer.state[engine.optimizer.optimizer.param_groups[0]["params"][0]].get("step")
        else:
            s = engine.optimizer.state.get(p, {})
            entry = {"weight": p.detach().cpu().clone(), "fp32": p.detach().float().cpu().clone(),
                     **{k: s[k].detach().cpu().clone() for k in ("exp_avg", "exp_avg_sq") if k in s}}
            step = s.get("step")
        entry["step"] = float(step) if step is not None else None
        out[name] = entry
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    return {"params": out, "lr_scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None,
            "lr": engine.get_lr(), "global_steps": engine.global_steps, "skipped_steps": engine.skipped_steps,
            "loss_scale": float(scaler.cur_scale) if scaler is not None and hasattr(scaler, "cur_scale") else None}
