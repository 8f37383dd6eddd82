"""Set-up of a finetuning run: from the config to the `Trainer` the loop trains with.

In order: decide what the claimed --out allows (a finished run is refused without --overwrite, a stopped one without
--resume), read and check the data (the same readers as `ds-distil predict`), build the tokenizer and the model, choose
max_length, featurise, fill the DeepSpeed config, start the engine; on --resume compare the settings with the
checkpoint's (refused before anything is loaded) and restore it; then make --out the run's directory (an --overwrite run
is swapped in here, so that the user watches DIR from the first step) and write its record: the resolved config, the
console log (DIR/finetune.log), TensorBoard and metrics.jsonl; and say what runs where.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ds_distil.core import rundir
from ds_distil.core.config import flatten, save, to_dict
from ds_distil.core.dist import barrier, broadcast
from ds_distil.core.errors import UserError
from ds_distil.core.runlog import RunLog
from ds_distil.core.signals import StopRequest
from ds_distil.data import duplicates, sampling
from ds_distil.data import transfer as transfer_set
from ds_distil.data.examples import Task
from ds_distil.data.readers import read_options
from ds_distil.data.tasks import load_task
from ds_distil.finetune import lengths, summary, teacher
from ds_distil.finetune.features import encode, featurise
from ds_distil.finetune.loop import FinetuneState, Trainer, banner_line, fp32_model, snapshot_of, training_rows
from ds_distil.finetune.model import build_model, tokenizer_for
from ds_distil.finetune.task_kd import TaskKD
from ds_distil.model.validate import check_max_length, max_positions
from ds_distil.runtime import checkpoint
from ds_distil.runtime import engine as eng
from ds_distil.runtime import resume as resume_settings
from ds_distil.runtime.metrics import Metrics
from ds_distil.schema.finetune import FinetuneConfig

log = logging.getLogger(__name__)

FINAL = ".ds-distil-final"  # DIR/.ds-distil-final/: the final outputs being written, before they are swapped in
DERIVED = ("world_size", "data.train_sha256", "data.valid_sha256", "data.transfer_sha256", "data.teacher_sha256", "data.labels",
           "max_length", "deepspeed.resolved_json_sha256")


@dataclass
class Setup:
    trainer: Trainer
    task: Task
    tokenizer: object
    max_length: int
    data: dict  # summary.describe_data, with the truncation report
    data_warnings: list[str]
    ds_config: dict
    distillation: dict | None = None  # what the student learnt from besides its labels (results.json's `distillation`)


def setup(model: str, task_name: str, rd: rundir.RunDir, cfg: FinetuneConfig, recipe: dict, resume: bool, d: eng.Dist,
          stop: StopRequest, run_log: RunLog) -> Setup:
    _check_out(rd, resume, d.rank)
    tc = cfg.task
    task = load_task(task_name, tc.data_dir, tc.hub, tc.seed, read_options(tc), tc.dataset_name)  # bad data fails before set-up
    if tc.dedup == "drop":
        task = duplicates.drop(task)
    task = sampling.sample_train(task, tc.max_train_examples, tc.seed)
    pool = task.splits["train"]  # what a live teacher runs over, as `ds-distil predict` over the training file
    transfer = None
    if tc.transfer_from_train:
        task, transfer = transfer_set.hold_back(task, tc.transfer_from_train, tc.seed)
    elif tc.transfer_file:
        transfer = transfer_set.read_file(tc.transfer_file, task, read_options(tc))
    source = teacher.open_source(cfg.teacher, cfg.teacher_predictions, task)  # checked before anything is built
    taught = transfer if source is not None and cfg.kd.transfer else None  # the transfer rows the student learns from
    tokenizer = tokenizer_for(model, tc)
    torch.manual_seed(cfg.train.seed)
    net = build_model(model, task, tokenizer)
    limit = max_positions(net)
    full = {s: lengths.token_lengths(task, s, tokenizer) for s in ("train", "valid", "test")}
    max_length = lengths.auto_length(full["train"], limit) if tc.max_length == "auto" else tc.max_length
    check_max_length(max_length, net, f"model '{model}'")
    feats = {s: featurise(task, s, tokenizer, max_length, lengths=full[s]) for s in task.splits}
    data = summary.describe_data(task)
    data["truncation"] = lengths.report(full, max_length, tc.max_length, limit)
    kd, targets = None, None
    if source is not None:
        targets = teacher.targets(source, task, pool, taught, cfg.kd.batch_size, teacher.teacher_dtype(cfg.kd.teacher_dtype, d.device), d)
        if taught:  # indexed after the training rows: a feature's index names its teacher target
            feats["transfer"] = [{**f, "index": len(feats["train"]) + f["index"]}
                                 for f in encode(task.kind, task.labels, taught.examples, tokenizer, max_length)]
            targets.record["transfer"]["truncated"] = sum(f["truncated"] for f in feats["transfer"])
        kd = TaskKD(task.kind, training_rows(feats), targets.train + targets.transfer, cfg.kd.alpha, cfg.kd.temperature)
    steps_per_epoch = math.ceil(len(training_rows(feats)) / (d.world_size * cfg.train.micro_batch_size))
    num_steps = eng.total_steps(cfg.train, steps_per_epoch)
    data_warnings = summary.data_warnings(data, num_steps)
    ds_path = eng.resolve_ds_json(cfg.deepspeed.config, d.device)
    ds_config = eng.ds_config_from(cfg.train, ds_path, d.world_size, num_steps, fused=eng.fused_adamw("auto", d.device),
                                   stage=cfg.deepspeed.zero_stage)
    settings = fingerprint(model, task_name, cfg, task, feats, max_length, d.world_size, ds_config)
    if targets is not None:
        settings["data.teacher_sha256"] = targets.sha256()
    tag = _resume_tag(rd.path, d.rank) if resume else None
    if tag is not None:  # refused before anything is loaded
        saved = resume_settings.saved_fingerprint(json.loads((rd.path / "checkpoints" / tag / "trainer_state.json").read_text()))
        for derived in (False, True):
            resume_settings.check(saved, settings, tag, derived=derived, derived_keys=DERIVED, cls=FinetuneConfig,
                                  settings_file="DIR/finetune_config.yaml")
    engine = eng.initialize(net, ds_config, cfg.train.weight_decay)
    torch.manual_seed(cfg.train.seed + d.rank)
    state = FinetuneState()
    if tag is not None:
        saved = checkpoint.load(engine, rd.path, tag)
        state = FinetuneState(**saved["trainer"], **saved["data"])
        state.resumed_at.append(state.step)
        if d.rank == 0:
            log.info("resumed from step %d (%s; epoch %d, micro batch %d of it)", state.step, tag, state.epoch, state.batch)
        if cfg.train.keep == "best" and state.best and snapshot_of(rd.path, state.best) is None:
            if d.rank == 0:
                log.warning("train.keep=best: the snapshot of the best model so far (step %d) is missing; the best model is "
                            "chosen among the validations from step %d on", state.best["step"], state.step)
            state.best = {}
    elif resume and d.rank == 0:
        log.info("--resume: no complete checkpoint in %s yet; starting from the beginning", rd.out)

    if rd.staging:  # --overwrite: the set-up succeeded; from here the new run is DIR, watched there from its first step
        rundir.commit_on_rank0(rd, d.rank)
    out = rd.path
    if d.rank == 0:
        shutil.rmtree(out / FINAL, ignore_errors=True)  # a run killed while writing its final outputs
        save(cfg, out / "finetune_config.yaml")
        run_log.open(out / "finetune.log")
    eval_every, ckpt_every = cfg.eval_every(num_steps), cfg.checkpoint_every(num_steps)
    metrics = Metrics(out, d.rank == 0, True, num_steps, state.step, desc="finetune")
    checkpoints = checkpoint.Checkpoints(engine, rd, d.rank, cfg.checkpoint.keep, {"config": to_dict(cfg), "resume": settings})
    t = Trainer(cfg, d, task, engine, tokenizer.pad_token_id, feats, num_steps, eval_every, ckpt_every, checkpoints, metrics, state, stop,
                fp32_model(engine), kd)
    s = Setup(t, task, tokenizer, max_length, data, data_warnings, ds_config, distillation(cfg, targets, taught, transfer))
    if d.rank == 0:
        _banner(s, model, recipe)
    barrier()
    return s


def finished(rd: rundir.RunDir) -> bool:
    """Whether --out holds a finished run (its results.json), which --resume leaves as it is."""
    return not rd.staging and (rd.path / "results.json").is_file()


def _check_out(rd: rundir.RunDir, resume: bool, rank: int) -> None:
    """What --out holds allows this run: a finished run is kept (--overwrite replaces it), a stopped one is continued
    (--resume) or replaced, never started over by accident."""
    err = None
    if rank == 0 and not rd.staging:
        if (rd.path / "results.json").is_file():
            err = (f"--out {rd.out} holds a finished finetuning run (results.json); pass --overwrite to run it again, or choose "
                   "another --out")
        elif checkpoint.latest_tag(rd.path / "checkpoints") is not None and not resume:
            err = (f"--out {rd.out} holds the checkpoints of a stopped finetuning run; pass --resume to continue it, --overwrite "
                   "to replace it, or choose another --out")
    err = broadcast([err])[0]
    if err:
        raise UserError(err)


def _resume_tag(run_dir: Path, rank: int) -> str | None:
    """Rank 0 picks the newest intact checkpoint (newer damaged ones are set aside and reported); all ranks learn it."""
    tag, notes = broadcast(list(checkpoint.choose_tag(run_dir)) if rank == 0 else [None, []])
    if rank == 0:
        for note in notes:
            log.warning("--resume: %s", note)
        if notes:
            log.warning("--resume: continuing from %s", tag or "the beginning (no intact checkpoint left)")
    return tag


def fingerprint(model: str, task_name: str, cfg: FinetuneConfig, task: Task, feats: dict, max_length: int, world_size: int,
                ds_config: dict) -> dict:
    """The flat {setting: value} a resumed run must match: the config (less what may change on --resume), the model
    and task named, and derived facts: the ranks, the rows trained and validated on as token ids (files, columns,
    dedup, sample and tokenizer in one), the labels, the resolved max_length and DeepSpeed JSON."""
    may_change = set(resume_settings.changeable(FinetuneConfig))
    fp = {k: v for k, v in flatten(to_dict(cfg)).items() if k not in may_change}
    fp.update({"model": model, "task": task_name, "world_size": world_size, "data.labels": list(task.labels),
               "max_length": max_length, "deepspeed.resolved_json_sha256": resume_settings.ds_json_sha256(ds_config)})
    for split in ("train", "valid", "transfer"):
        if split not in feats:
            continue
        rows = [[f["input_ids"], f["labels"], f.get("token_type_ids")] for f in feats[split]]
        fp[f"data.{split}_sha256"] = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    return fp


def _banner(s: Setup, model: str, recipe: dict) -> None:
    """What runs where and on what, on rank 0's console (and DIR/finetune.log), before the first step."""
    t, task = s.trainer, s.task
    out = t.checkpoints.run_dir
    log.info("finetune %s on %s (%s, %d labels): %s train / %s valid / %s test examples; %d rank(s), %s, %s, ZeRO stage %d; "
             "%d steps", model, task.name, task.kind, len(task.labels), f"{len(t.feats['train']):,}", f"{len(t.feats['valid']):,}",
             f"{len(t.feats['test']):,}", t.d.world_size, t.d.device, eng.precision(s.ds_config),
             s.ds_config["zero_optimization"]["stage"], t.num_steps)
    log.info("watch it: tensorboard --logdir %s | metrics %s | console log %s", out / "tensorboard", out / "metrics.jsonl",
             out / "finetune.log")
    log.info("%s", recipe_line(recipe))
    log.info("%s", banner_line(t))
    for line in summary.data_lines({"task": task.name, **s.data}):
        log.info("%s", line)
    for warning in s.data_warnings:
        log.warning("%s", warning)
    kd = s.distillation
    if kd and kd.get("teacher"):
        for line in teacher.lines(kd["teacher"], kd["alpha"], kd["temperature"]):
            log.info("%s", line)
    if kd and kd.get("left_out"):
        why = "kd.transfer=false" if kd.get("teacher") else "no teacher"
        log.info("%s, %s: those rows are left out; the student trains on the %s labelled rest", kd["left_out"]["setting"], why,
                 f"{len(t.feats['train']):,}")


def distillation(cfg: FinetuneConfig, targets: teacher.Targets | None, taught: transfer_set.Transfer | None,
                 held: transfer_set.Transfer | None) -> dict | None:
    """results.json's `distillation`: the teacher, its settings and what it said of the rows, and the held-back rows left
    out (task.transfer_from_train without a teacher, or kd.transfer=false); None for plain finetuning."""
    out = {}
    if targets is not None:
        out = {"teacher": targets.record, "alpha": cfg.kd.alpha, "temperature": cfg.kd.temperature,
               "loss": "alpha * CE(gold) + (1 - alpha) * T^2 * KL(teacher_T || student_T); transfer rows: T^2 * KL alone",
               "transfer_rows": len(taught.examples) if taught else 0}
    if held is not None and taught is None:
        out["left_out"] = held.source
    return out or None


def recipe_line(recipe: dict) -> str:
    """What the recipe beneath the user's settings set, and which of its keys the user's own settings replaced."""
    if recipe["name"] == "none":
        missing = f" ({recipe['missing']} not found)" if "missing" in recipe else ""
        return f"recipe: none{missing}: the defaults of `ds-distil finetune --help` beneath your settings"
    applied = " ".join(f"{k}={v}" for k, v in recipe["applied"].items()) or "nothing"
    yours = "; yours kept: " + " ".join(f"{k}={v}" for k, v in recipe["yours"].items()) if recipe["yours"] else ""
    return (f"recipe: {recipe['name']} ({recipe['file']}), because {recipe['why']}: {applied}{yours} "
            "(recipe=blank|pretrained|none chooses another)")
