"""Set-up of a distillation run: from the run config to the `Components` the loop trains with.

In order: claim --out (core.rundir), read the shards' manifest, choose the checkpoint a --resume continues from and
the split of its global batch over the ranks there are now (distill/elastic.py), read a target-language vocabulary,
check the vocabularies of everything pretrained, build teacher and student (model surgery for a trimmed vocabulary),
the objective (it checks the pair) and the stream, fill the DeepSpeed config, compare a resumed run's settings with its
checkpoint's (refused before anything is written or loaded), write the run's record (resolved config, DeepSpeed
JSON, environment, the student's config and tokenizer), start the engine, place the teacher, restore the
checkpoint (on any number of ranks: runtime/checkpoint.py), then the step, the teacher signal, validation,
checkpoints and metrics, and say what runs where (and, resumed on another layout, what changed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist

from ds_distil.core import rundir
from ds_distil.core.config import save, to_dict
from ds_distil.core.dist import broadcast
from ds_distil.core.env_info import command_line, device_info, versions
from ds_distil.core.errors import UserError
from ds_distil.core.io import atomic_write_json
from ds_distil.data.manifest import load_manifest
from ds_distil.data.masking import MASKING_RULE
from ds_distil.data.stream import MLMStream
from ds_distil.data.teacher_cache import REBUILD, TeacherCache, load_cache, vocab_made_for
from ds_distil.data.vocab import load_vocab_map
from ds_distil.distill import elastic, evaluate, objectives
from ds_distil.distill import resume as resume_settings
from ds_distil.distill.batch import Translation
from ds_distil.distill.loop import Components, TrainerState
from ds_distil.distill.objectives.base import Objective
from ds_distil.distill.step import DistillStep
from ds_distil.distill.teacher import CachedTeacher, LiveTeacher, NoTeacher
from ds_distil.model.build import build_student, build_teacher, count_parameters, weights_sha256
from ds_distil.model.forward import MaskedLM
from ds_distil.model.surgery import TrimmedRun, prepare_trimmed_run
from ds_distil.model.validate import check_seq_len
from ds_distil.runtime import checkpoint
from ds_distil.runtime import engine as eng
from ds_distil.runtime.flops import Arch, peak_flops
from ds_distil.runtime.memory import check_micro_batch
from ds_distil.runtime.metrics import DeviceStats, Metrics
from ds_distil.schema.distill import DistillConfig

log = logging.getLogger(__name__)


class StudentWithObjective(MaskedLM):
    """The student as DeepSpeed trains it when the objective has parameters of its own (a projection): they sit
    under `objective.` beside the model's `model.`, are trained with it, and are left out of the export."""

    def __init__(self, model: torch.nn.Module, vocab: int, objective_module: torch.nn.Module):
        super().__init__(model, vocab)
        self.objective = objective_module


def setup(cfg: DistillConfig, out: str | Path, resume: bool = False, overwrite: bool = False) -> Components:
    if resume and overwrite:
        raise UserError("--resume continues the run in --out, --overwrite replaces it: pass one of them")
    d = eng.init_distributed()
    rd = rundir.claim_on_rank0(d.rank, lambda: rundir.claim(out, "distill", overwrite=overwrite, inputs=_inputs(cfg),
                                                             ignore=("hostfile",), in_place=True))
    try:
        return _build(cfg, rd, resume, d)
    except BaseException:
        if d.rank == 0:
            rd.abort()  # nothing of the old output was touched; a directory we made and left empty goes
            rd.release()
        raise


def _build(cfg: DistillConfig, rd: rundir.RunDir, resume: bool, d: eng.Dist) -> Components:
    run_dir = rd.path
    manifest = load_manifest(cfg.data.shards)
    tag = _resume_tag(run_dir, d) if resume else None
    saved_state = json.loads((run_dir / "checkpoints" / tag / "trainer_state.json").read_text()) if tag else None
    split = elastic.Split(cfg.train.micro_batch_size, cfg.train.grad_accum_steps, d.world_size)
    saved_split = split
    if saved_state is not None:  # the global batch the run began with, on the ranks there are now (or refused)
        saved_split = elastic.saved_split(saved_state)
        split = elastic.choose(saved_split, cfg, d.world_size, tag)
        cfg = elastic.apply(cfg, split)
    tok = manifest.tokenizer
    vocab, pad = int(tok["vocab_size"]), int(tok["pad_id"])
    vmap = None
    if cfg.student.vocab:  # a target-language vocabulary (ds_distil/data/vocab.py)
        vmap = load_vocab_map(cfg.student.vocab)
        vmap.check_shards(manifest)
    _check_vocabularies(cfg, manifest, vmap)
    objective = objectives.build(cfg)
    if objective.teacher is None and cfg.teacher.enabled:
        raise UserError(f"loss.objective {objective.name} trains without a teacher, but teacher.enabled is true; set "
                        "teacher.enabled=false, or loss.objective=auto")
    cache = _open_cache(cfg, d.rank, d.world_size) if cfg.teacher.cache else None

    torch.manual_seed(cfg.train.seed)  # the same initial student on every rank
    multiple = cfg.perf.pad_vocab_multiple
    if cache is None:
        teacher = build_teacher(cfg.teacher, vocab, pad, 1 if vmap else multiple)
    else:  # a teacher named beside the cache is built only to check that the cache is its own (and to initialise the student)
        teacher = build_teacher(cfg.teacher, vocab, pad, 1) if _names_a_teacher(cfg) else None
        cache.check({"vocab": vocab_made_for(tok, vmap), "temperature": cfg.loss.temperature,
                     **({"teacher_sha256": weights_sha256(teacher)} if teacher is not None else {})})
    s_vocab, s_pad, kept, trimmed = vocab, pad, None, None
    if vmap is not None:  # the teacher's LM head over the kept rows only; the student over the kept ids
        trimmed = prepare_trimmed_run(vmap, teacher, pad, int(tok["unk_id"]), multiple)
        s_vocab, s_pad, kept = trimmed.vocab, trimmed.pad_id, trimmed.kept
    student = build_student(cfg.student, s_vocab, s_pad, teacher, multiple, teacher_rows=kept)
    teacher_config = teacher.config if teacher is not None else (_cache_teacher_config(cache) if cache else None)
    objective.bind(teacher_config, student.config)  # may build its parameters: same on every rank
    live_validation = cache is not None and cfg.teacher.cache_validation == "live"
    if cache is not None:  # the teacher is not used for training: the cache stands in for it
        _check_cached_objective(objective)
        if not live_validation:  # nor kept for validation
            teacher = None
            if trimmed is not None:
                trimmed.full_head = None
    check_seq_len(manifest.seq_len, teacher, student, cfg)
    torch.manual_seed(cfg.train.seed + d.rank)  # dropout differs between ranks

    stream = MLMStream(manifest, cfg.data, batch_size=cfg.train.micro_batch_size, rank=d.rank, world_size=d.world_size,
                       keep_ids=vmap.is_kept() if vmap else None, cache=cache)
    schedule, num_steps = _schedule(cfg, stream, saved_state, saved_split, split)
    ds_config = eng.build_ds_config(cfg, d.world_size, schedule.total_steps, d.device, warmup_steps=schedule.warmup_steps)
    check_micro_batch(student.config, cfg.train.micro_batch_size, manifest.seq_len, cfg.train.micro_batch_size * stream.max_masked,
                      s_vocab, 4 if eng.precision(ds_config) == "fp32" else 2, d.device, teacher_logits=cache is None)  # before anything big is allocated
    settings = resume_settings.fingerprint(cfg, manifest, d.world_size, ds_config, MASKING_RULE)
    if vmap is not None:  # the vocabulary's content, not only its path
        settings["student.vocab_kept_sha256"] = vmap.content_sha256
    if cache is not None:  # the cache's content, not its path
        settings["teacher.cache_content_sha256"] = cache.content_sha256
    universal = False
    if tag is not None:  # refused before anything is written or loaded
        saved = resume_settings.saved_fingerprint(saved_state)
        resume_settings.check(saved, settings, tag, derived=False)
        resume_settings.check(saved, settings, tag, derived=True)
        universal = checkpoint.needs_universal(run_dir, tag, d.world_size, ds_config["zero_optimization"]["stage"])
    t_dtype = eng.teacher_dtype(cfg.teacher.dtype, d.device)
    _prepare_run_dir(cfg, run_dir, resume, d, student, vmap.directory if vmap else manifest.tokenizer_dir, ds_config, t_dtype)
    t_params, s_params = count_parameters(teacher), count_parameters(student)
    trained = (MaskedLM(student, s_vocab) if objective.module is None else StudentWithObjective(student, s_vocab, objective.module))
    group_names = eng.param_group_names(trained, cfg.train.weight_decay)
    engine_config = ds_config
    if universal and ds_config["zero_optimization"]["stage"] > 0:  # DeepSpeed cuts this engine's partitions from it
        engine_config = {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}
    model_engine = eng.initialize(trained, engine_config, cfg.train.weight_decay)
    teacher = eng.place_teacher(teacher, d.device, t_dtype)
    if trimmed is not None and trimmed.full_head is not None:
        trimmed.full_head.to(device=d.device, dtype=t_dtype)

    state, change = TrainerState(), None
    if tag is not None:
        saved = checkpoint.load(model_engine, run_dir, tag, group_names, cfg.train.seed)
        state = TrainerState(**saved["trainer"], data=saved["data"])
        stream.load_state_dict(saved["data"])
        if split.global_batch != saved_split.global_batch:  # allow_global_batch_change: the schedule goes on by samples
            num_steps = _rescale_position(model_engine, saved_state, saved_split, split, schedule, state.step)
        log.info("resumed from step %d (%s; epoch %d, %.0f%% of it%s)", state.step, tag, stream.position.epoch,
                 100 * (stream.epoch_progress() - stream.position.epoch),
                 f"; its rest laid out for {stream.layout.text()}" if stream.resharded else "")
        if split != saved_split:
            change = elastic.change_line(saved_split, split)
            if d.rank == 0:
                log.info("%s", change)
    elif resume:
        log.info("--resume: no complete checkpoint in %s yet; starting from the beginning", run_dir)

    step = build_step(model_engine, objective, teacher, s_vocab, cfg.loss.temperature, d.device, d.world_size, trimmed,
                      compile=eng.compile_enabled(cfg.perf, d.device), cached=cache is not None)
    # held-out validation with the step's own objective, teacher signal and id translation (ds_distil/distill/evaluate.py);
    # from a cache: against its held-out copy, or, where it has none, the MLM terms only (the KL needs the teacher)
    # or, with teacher.cache_validation=live, against the teacher named beside the cache, as a live run validates
    val_cache = cache if cache is not None and not live_validation and "val" in cache.data["splits"] else None
    if cache is None or val_cache:
        val_teacher = step.teacher
    elif live_validation:
        val_teacher = LiveTeacher(teacher, s_vocab, objective.teacher, cfg.loss.temperature,
                                  full_head=trimmed.full_head if trimmed else None, kept=trimmed.kept if trimmed else None)
    else:  # a cache without a held-out copy: the MLM terms only
        val_teacher = None
    validator = evaluate.build(manifest, cfg.data, cfg.log.eval_max_samples, cfg.train.micro_batch_size, d.device,
                               objective if val_teacher is not None else objectives.MLM(), d.rank, d.world_size,
                               keep_ids=stream.keep_ids, teacher=val_teacher, translation=step.translation, cache=val_cache)
    device_stats = DeviceStats(d.device)
    record = {"config": to_dict(cfg), "resume": resume_settings.recorded(settings), "objective": objective.declaration(),
              "split": dataclasses.asdict(split), "schedule": dataclasses.asdict(schedule), "num_steps": num_steps}
    c = Components(cfg, d, model_engine, stream, objective, step.teacher, step, validator,
                   checkpoint.Checkpoints(model_engine, rd, d.rank, cfg.checkpoint.keep, record),
                   Metrics(run_dir, d.rank == 0, cfg.log.tensorboard, num_steps, state.step), state, num_steps,
                   Arch.of(student, s_vocab), peak_flops(device_stats.name, cfg.log.peak_tflops), device_stats)
    if d.rank == 0:
        _banner(c, manifest, ds_config, vmap, vocab, t_params, s_params, t_dtype, student)
    if tag is not None:  # at the resumed step, in metrics.jsonl too (a later resume from the same step replaces it)
        c.metrics.event(state.step, "resumed", change or f"resumed on {d.world_size} rank(s), as before",
                        world_size=split.world, was_world_size=saved_split.world, accumulation=split.accum,
                        was_accumulation=saved_split.accum, micro_batch=split.micro, was_micro_batch=saved_split.micro,
                        global_batch=split.global_batch, was_global_batch=saved_split.global_batch, checkpoint=tag)
    return c


def _schedule(cfg: DistillConfig, stream: MLMStream, saved_state: dict | None, saved_split: elastic.Split,
              split: elastic.Split) -> tuple[elastic.Schedule, int]:
    """The LR schedule (length, warm-up, in steps of the global batch) and the optimizer steps of the run: fixed when the
    run begins (a resume on another layout, whose epochs have other step counts, keeps them); rescaled by samples where
    the global batch changes (train.allow_global_batch_change; the run's length is then set after loading)."""
    if saved_state is None:
        total = eng.total_steps(cfg.train, stream.steps_per_epoch)
        return elastic.Schedule(total, elastic.warmup_steps(cfg, total), split.global_batch), total
    if "schedule" in saved_state:
        schedule, num_steps = elastic.Schedule(**saved_state["schedule"]), int(saved_state["num_steps"])
    else:  # a checkpoint from before: the schedule its run computed, on its own layout
        train = dataclasses.replace(cfg.train, grad_accum_steps=saved_split.accum)
        total = eng.total_steps(train, elastic.epoch_micro_steps(stream.n_samples, saved_split))
        schedule, num_steps = elastic.Schedule(total, elastic.warmup_steps(cfg, total), saved_split.global_batch), total
    if schedule.global_batch != split.global_batch:
        schedule = schedule.rescaled(split.global_batch)
    return schedule, num_steps


def _rescale_position(engine, saved_state: dict, saved_split: elastic.Split, split: elastic.Split,
                      schedule: elastic.Schedule, step: int) -> int:
    """The global batch changed: move the loaded LR schedule to the same sample position in steps of the new global
    batch; returns the run's new length in optimizer steps (it ends where the schedule does)."""
    scheduler = engine.lr_scheduler
    g_old = saved_state["schedule"]["global_batch"] if "schedule" in saved_state else saved_split.global_batch
    done = int(scheduler.last_batch_iteration) + 1  # schedule steps taken (DeepSpeed's iteration is the last one's index)
    now = round(done * g_old / split.global_batch)  # as many samples, in steps of the new global batch
    scheduler.step(now - 1)  # the LR of that position of the rescaled schedule (the engine's config has its length)
    num_steps = step + max(0, schedule.total_steps - now)
    log.info("global batch %d -> %d: LR schedule continued by samples (%d steps of %d samples = %d steps of %d of %d); the run "
             "now ends at step %d", g_old, split.global_batch, done, g_old, now, split.global_batch, schedule.total_steps, num_steps)
    return num_steps


def build_step(engine, objective: Objective, teacher: torch.nn.Module | None, vocab: int, temperature: float,
               device: torch.device, world_size: int, trimmed: TrimmedRun | None = None, compile: bool = False,
               cached: bool = False) -> DistillStep:
    """The micro step for `objective`: the teacher signal it needs (the live teacher, placed already, a teacher cache's
    targets in the batches, or none) and a trimmed vocabulary's translation. Also what the benchmarks time as "ours"."""
    signal = NoTeacher() if objective.teacher is None else CachedTeacher() if cached else LiveTeacher(
        teacher, vocab, objective.teacher, temperature, compile, full_head=trimmed.full_head if trimmed else None,
        kept=trimmed.kept if trimmed else None)
    translation = Translation(trimmed.id_map, trimmed.target_map) if trimmed else None
    return DistillStep(engine, objective, signal, device, world_size, translation, compile=compile)


def _banner(c: Components, manifest, ds_config: dict, vmap, vocab: int, t_params: dict, s_params: dict, t_dtype, student) -> None:
    """What runs where, on rank 0's console."""
    cfg, d, stream, t = c.cfg, c.dist, c.stream, c.cfg.train
    global_batch = t.micro_batch_size * t.grad_accum_steps * d.world_size
    source = cfg.teacher.pretrained or cfg.teacher.config or (f"preset {cfg.teacher.preset}" if cfg.teacher.preset else None)
    log.info("distill: %d rank(s), backend %s, device %s, student precision %s, ZeRO stage %d", d.world_size, d.backend, d.device,
             eng.precision(ds_config), ds_config["zero_optimization"]["stage"])
    log.info("perf: vocabulary rows %d (padded to a multiple of %d), torch.compile %s, fused AdamW %s", student.config.vocab_size,
             cfg.perf.pad_vocab_multiple, "on" if eng.compile_enabled(cfg.perf, d.device) else "off",
             "on" if ds_config["optimizer"]["params"].get("fused") else "off")
    if cfg.teacher.cache:
        cached = c.stream.cache.data  # read once, at set-up
        top_k = cached["made_for"].get("method") == "top_k"
        log.info("teacher: not loaded; its %s come from the cache %s (K = %d per masked token at T = %g, %d mask copies); "
                 "validation: %s", "top-k targets" if top_k else "sampled targets", cfg.teacher.cache, cached["k"],
                 cached["made_for"]["temperature"],
                 cached["masking"]["copies"], "against the live teacher (kept in memory for validation only)"
                 if cfg.teacher.cache_validation == "live" else "against the cache's held-out copy (the KL its sampled "
                 "estimate; no top-1 agreement)" if "val" in cached["splits"] else "MLM terms only (the cache has no held-out copy)")
    else:
        log.info("teacher: %s", f"{source}, {t_params['total'] / 1e6:.1f}M params, {str(t_dtype).removeprefix('torch.')}, frozen, eval"
                 if c.objective.teacher is not None else "none (MLM only)")
    if vmap is not None:
        log.info("vocabulary: %s, %d of %d tokens kept; the teacher's head and the KL run over them", vmap.directory, vmap.size, vocab)
    sc = student.config
    arch = f"{sc.num_hidden_layers} layers x {sc.hidden_size} hidden, {sc.intermediate_size} FFN, {sc.num_attention_heads} heads"
    log.info("student: %s (%s), %.1fM params (%.1fM embeddings), %.1fM trainable", cfg.student.pretrained or cfg.student.preset or "custom",
             arch, s_params["total"] / 1e6, s_params["embeddings"] / 1e6, s_params["trainable"] / 1e6)
    log.info("batch: micro %d x accumulation %d x %d rank(s) = %d samples (%d tokens) per optimizer step",
             t.micro_batch_size, t.grad_accum_steps, d.world_size, global_batch, global_batch * stream.seq_len)
    log.info("data: %s, %s train samples (%s tokens) in %d shards, %d micro batches per epoch per rank", cfg.data.shards,
             f"{stream.n_samples:,}", f"{manifest.data['splits']['train']['tokens']:,}", len(stream.shards), stream.steps_per_epoch)
    log.info("run: %d optimizer steps (%.2f epochs) from step %d; objective %s: %s", c.num_steps,
             c.num_steps * t.grad_accum_steps / stream.steps_per_epoch, c.state.step, c.objective.name, c.objective.formula())
    if c.validator is not None:
        every = cfg.log.eval_every_steps
        log.info("validation: %s of the %s samples of the held-out split, %s; masks fixed by sample", f"{c.validator.n_samples:,}",
                 f"{c.validator.stream.n_samples:,}", f"every {every} steps and at the end" if every else "at the end")


def _prepare_run_dir(cfg: DistillConfig, run_dir: Path, resume: bool, d: eng.Dist, student, tokenizer_dir: Path, ds_config: dict,
                     t_dtype: torch.dtype) -> None:
    if checkpoint.latest_tag(run_dir / "checkpoints") is not None and not resume:
        raise UserError(f"{run_dir} already holds checkpoints; pass --resume to continue it, --overwrite to replace it "
                        "(swapped in at the new run's first checkpoint), or choose another --out")
    if d.rank == 0:
        save(cfg, run_dir / "run_config.yaml")
        atomic_write_json(run_dir / "ds_config.json", ds_config)
        atomic_write_json(run_dir / "environment.json", {"versions": versions(), "device": device_info(), "world_size": d.world_size,
                                                         "backend": d.backend, "started_by": command_line(),
                                                         "teacher_dtype": str(t_dtype).removeprefix("torch.")})
        student.config.save_pretrained(str(run_dir / "student_config"))
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(run_dir / "tokenizer"))  # the student's
    dist.barrier()


def _resume_tag(run_dir: Path, d: eng.Dist) -> str | None:
    """Rank 0 picks the newest intact checkpoint (newer damaged ones are set aside and reported); all ranks learn it."""
    box = list(checkpoint.choose_tag(run_dir)) if d.rank == 0 else [None, []]
    tag, notes = broadcast(box)
    if d.rank == 0:
        for note in notes:
            log.warning("--resume: %s", note)
        if notes:
            log.warning("--resume: continuing from %s", tag or "the beginning (no intact checkpoint left)")
    return tag


def _names_a_teacher(cfg: DistillConfig) -> bool:
    return any((cfg.teacher.pretrained, cfg.teacher.config, cfg.teacher.preset))


def _open_cache(cfg: DistillConfig, rank: int, world_size: int) -> TeacherCache:
    """The run's teacher cache, checked: every file present, each rank hashing its share (unless data.verify_checksums
    is off), as the shards are."""
    cache = load_cache(cfg.teacher.cache)
    for split in cache.data["splits"]:
        cache.verify(split, cfg.data.verify_checksums, rank, world_size)
    return cache


def _check_cached_objective(objective: Objective) -> None:
    """Refuse an objective (bound: its needs are known) that wants more of the teacher than a cache holds: its output
    distribution at the masked positions."""
    needs = objective.teacher
    if needs is None or objective.name != "kd" or needs.intermediate or needs.hidden:
        what = ("uses no teacher" if needs is None else "needs the live teacher's hidden states or attention"
                if needs.intermediate or needs.hidden else "is not kd")
        raise UserError(f"teacher.cache is set, but loss.objective {objective.name} {what}: a teacher cache holds sampled "
                        "targets of the teacher's output distribution at the masked positions, for loss.objective=kd with "
                        "loss.a_hidden=0; drop teacher.cache to run the teacher live")


def _cache_teacher_config(cache: TeacherCache):
    """The teacher's architecture as the cache recorded it (what the objective checks the student against)."""
    from transformers import AutoConfig

    saved = dict(cache.data["teacher"]["config"])
    try:
        return AutoConfig.for_model(saved.pop("model_type"), **saved)
    except Exception as e:  # an unknown model_type (ValueError), a field transformers' strict config refuses
        raise UserError(f"teacher cache {cache.directory}: teacher.config in its manifest does not make a transformers config "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); {REBUILD}") from None


def _inputs(cfg: DistillConfig) -> list[Path]:
    """What the run reads: --out may not be, hold or lie inside any of it."""
    from ds_distil.data.tokenizer import looks_like_path

    names = [cfg.data.shards, cfg.deepspeed.config, cfg.teacher.config, cfg.teacher.pretrained, cfg.student.pretrained,
             cfg.student.vocab, cfg.teacher.cache]
    return [Path(n) for n in names if n and (Path(n).exists() or looks_like_path(n))]


def _check_vocabularies(cfg: DistillConfig, manifest, vmap=None) -> None:
    """A pretrained teacher or student brings its own tokenizer: it must be the shards' one (a student
    with a trimmed vocabulary: the vocabulary directory's)."""
    from ds_distil.data.tokenizer import load_tokenizer, vocab_hash

    for what, name in (("teacher", cfg.teacher.pretrained if cfg.teacher.enabled else None), ("student", cfg.student.pretrained)):
        if not name:
            continue
        try:
            tok = load_tokenizer(name)
        except UserError:
            log.warning("%s %s has no tokenizer to compare with the shards'; checking the vocabulary size only", what, name)
            continue
        if what == "student" and vmap is None and len(tok) < int(manifest.tokenizer["vocab_size"]):
            raise UserError(f"the student '{name}' has a {len(tok):,}-token vocabulary, the shards {int(manifest.tokenizer['vocab_size']):,}: "
                            "a student trimmed to a target-language vocabulary needs student.vocab=VOCAB_DIR (the one it was trimmed to)")
        if what == "student" and vmap is not None:
            if vocab_hash(tok) != vmap.trimmed_sha256:
                raise UserError(f"the student '{name}' has another vocabulary (size {len(tok)}) than student.vocab {vmap.directory} "
                                f"({vmap.size}); trim it with `ds-distil trim --model {name} --vocab {vmap.directory}` first")
            continue
        manifest.check_tokenizer(vocab_hash(tok), len(tok), what=f"the {what} '{name}'")

