"""The distillation loop: `setup` builds everything from the run config, `Trainer.fit` trains.

A micro step is `DistillStep` (ds_distil/distill/step.py): teacher and student at the masked
positions only, per-global-token losses, DeepSpeed's backward and step, no host sync. The loop
accumulates its statistics on the device; once per optimizer step the ranks exchange one small
vector (the step's statistics, a stop request) and the host reads it: the one sync, where
DeepSpeed's own step (grad norm, overflow check) synchronises anyway. Checkpoints are taken at
optimizer-step boundaries and carry the data position.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ds_distil.core import rundir
from ds_distil.core.config import save, to_dict
from ds_distil.core.env_info import command_line, device_info, versions
from ds_distil.core.errors import UserError
from ds_distil.core.signals import (
    EXIT_PREEMPTED,
    ignore_stop_signals,
    on_stop_signal,
    signal_name,
)
from ds_distil.data.manifest import load_manifest
from ds_distil.data.masking import MASKING_RULE
from ds_distil.data.stream import MLMStream
from ds_distil.data.vocab import load_vocab_map
from ds_distil.distill import checkpoint, evaluate
from ds_distil.distill import resume as resume_settings
from ds_distil.distill.step import STATS, DistillStep
from ds_distil.model.build import build_student, build_teacher, count_parameters
from ds_distil.model.forward import MaskedLM
from ds_distil.model.surgery import prepare_trimmed_run
from ds_distil.model.validate import check_seq_len
from ds_distil.runtime import engine as eng
from ds_distil.runtime.flops import Arch, distill_step_flops, peak_flops
from ds_distil.runtime.metrics import DeviceStats, Metrics
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


class Trainer:
    rundir: rundir.RunDir | None = None  # set by setup(): the claimed --out (and the --overwrite swap)
    resume_settings: dict | None = None  # set by setup(): what each checkpoint records for --resume

    def __init__(self, cfg: DistillConfig, run_dir: Path, d: eng.Dist, stream: MLMStream, model_engine, teacher,
                 num_steps: int, state: TrainerState, vocab: int, translation: dict | None = None):
        self.cfg, self.run_dir, self.d = cfg, run_dir, d
        self.stream, self.engine, self.teacher = stream, model_engine, teacher
        self.num_steps, self.state = num_steps, state
        self.batches: Iterator[dict] = iter(stream)
        self.stop_requested = False
        self.student_arch = Arch.of(model_engine.module.model, vocab)
        self.teacher_arch = Arch.of(teacher, vocab) if teacher is not None else None
        self.device_stats = DeviceStats(d.device)
        self.peak = peak_flops(self.device_stats.name, cfg.log.peak_tflops)
        self.micro_step = DistillStep(model_engine, teacher, vocab, cfg.loss, d.device, d.world_size,
                                      compile=eng.compile_enabled(cfg.perf, d.device), **(translation or {}))
        # held-out validation with the step's own teacher head and id translation (ds_distil/distill/evaluate.py)
        self.validator = evaluate.build(stream.manifest, cfg.data, cfg.log.eval_max_samples, cfg.train.micro_batch_size, d.device,
                                        cfg.loss.temperature, d.rank, d.world_size, keep_ids=stream.keep_ids,
                                        teacher_lm=self.micro_step.teacher_lm, id_map=self.micro_step.id_map,
                                        target_map=self.micro_step.target_map)
        if self.validator is not None and d.rank == 0:
            every = cfg.log.eval_every_steps
            log.info("validation: %s of the %s samples of the held-out split, %s; masks fixed by sample", f"{self.validator.n_samples:,}",
                     f"{self.validator.stream.n_samples:,}", f"every {every} steps and at the end" if every else "at the end")

    def _optimizer_step(self) -> tuple[torch.Tensor, int, bool]:
        """Micro steps up to the next optimizer-step boundary; then the one exchange between ranks.
        Returns (STATS summed over ranks and micro steps, micro steps, stop requested on any rank)."""
        step_acc = torch.zeros(len(STATS), dtype=torch.float64, device=self.d.device)
        micro = 0
        while True:
            boundary = self.engine.is_gradient_accumulation_boundary()
            self.last_batch = next(self.batches)
            step_acc += self.micro_step(self.last_batch)
            micro += 1
            if boundary:
                break
        exchange = torch.cat([step_acc, torch.tensor([float(self.stop_requested)], dtype=torch.float64, device=self.d.device)])
        dist.all_reduce(exchange)
        exchange = exchange.cpu()  # the sync
        return exchange[:-1], micro, bool(exchange[-1] > 0)

    # -- the loop

    def fit(self) -> int:
        """Train to num_steps (or a stop signal); returns a process exit status."""
        cfg, st = self.cfg, self.state
        metrics = Metrics(self.run_dir, self.d.rank == 0, cfg.log.tensorboard, self.num_steps, st.step)
        self._install_signal_handlers()
        acc = torch.zeros(len(STATS), dtype=torch.float64)
        t0, micro_in_window = time.perf_counter(), 0
        status = 0
        try:
            while st.step < self.num_steps:
                stats, micro, stop = self._optimizer_step()
                st.step += 1
                st.micro_steps += micro
                st.tokens += int(stats[STATS.index("tokens")])
                st.samples += int(stats[STATS.index("samples")])
                if stats[STATS.index("nonfinite")] > 0:
                    st.nonfinite_run += 1
                    st.nonfinite_total += 1
                    log.warning("non-finite loss at step %d (%d step(s) in a row); DeepSpeed skipped the update", st.step,
                                st.nonfinite_run)
                    if st.nonfinite_run >= cfg.train.max_nonfinite_steps:
                        raise UserError(
                            f"loss was NaN/inf for {st.nonfinite_run} optimizer steps in a row at step {st.step}; stopping "
                            "instead of burning compute: lower train.lr, use ds_configs/zero2-bf16.json instead of fp16, "
                            "or check the data"
                        )
                else:
                    st.nonfinite_run = 0
                    acc += stats
                    micro_in_window += micro
                metrics.step(1, loss=f"{stats[0].item() / micro:.3f}")
                if st.step % cfg.log.every_steps == 0 or st.step == self.num_steps:
                    self._log(metrics, acc, max(micro_in_window, 1), time.perf_counter() - t0)
                    acc.zero_()
                    t0, micro_in_window = time.perf_counter(), 0
                stop = stop and st.step < self.num_steps  # at the end: just finish
                if self._validation_due():  # before the checkpoint, which then holds the figures
                    self._validate(metrics)
                every = cfg.checkpoint.every_steps
                if stop or st.step == self.num_steps or (every and st.step % every == 0):
                    self.save()
                if stop:
                    log.warning("stop requested by signal: checkpoint %s written; exiting for requeue (--resume continues)",
                                checkpoint.tag_for(st.step))
                    status = EXIT_PREEMPTED
                    break
        finally:
            metrics.close()
        return status

    def _log(self, metrics: Metrics, acc: torch.Tensor, micro: int, elapsed: float) -> None:
        """`acc`: STATS summed over ranks and the window's `micro` (finite) micro steps."""
        e, mean = self.engine, acc / micro
        masked_per_rank_step = acc[STATS.index("masked")].item() / micro / self.d.world_size
        flops = micro * distill_step_flops(self.student_arch, self.teacher_arch, self.cfg.train.micro_batch_size,
                                           self.stream.seq_len, masked_per_rank_step)
        values = {
            "loss/total": mean[STATS.index("total")].item(),
            "loss/mlm": mean[STATS.index("mlm")].item(),
            "lr": e.get_lr()[0],
            "throughput/tokens_per_s": acc[STATS.index("tokens")].item() / elapsed,
            "throughput/samples_per_s": acc[STATS.index("samples")].item() / elapsed,
            "train/tokens_seen": float(self.state.tokens),
            "train/epoch": self.stream.position.epoch + self.stream.position.step / self.stream.steps_per_epoch,
            "train/overflow_skipped_steps": float(e.skipped_steps),
            "train/nonfinite_skipped_steps": float(self.state.nonfinite_total),
        }
        if self.teacher is not None:
            values["loss/kl"] = mean[STATS.index("kl")].item()
            outside = self.micro_step.teacher_mass_outside(self.last_batch)  # trimmed vocabulary only
            if outside is not None:
                dist.all_reduce(outside)
                values["teacher/mass_outside_vocab"] = (outside[0] / outside[1].clamp(min=1)).item()
            if self.cfg.loss.a_hidden > 0:
                values["loss/hidden"] = mean[STATS.index("hidden")].item()
        norm = e.get_global_grad_norm()
        if norm is not None:
            values["grad_norm"] = float(norm)
        if eng.precision(e.config) == "fp16":
            values["loss_scale"] = float(e.optimizer.cur_scale)
        values["throughput/tflops_per_device"] = flops / elapsed / 1e12
        if self.peak:
            values["throughput/mfu"] = flops / elapsed / self.peak
        values.update(self.device_stats.read())
        metrics.scalars(self.state.step, values)
        if self.d.rank == 0:
            log.info("step %d/%d | loss %.4f | %slr %.2e | %.0f tokens/s%s", self.state.step, self.num_steps, values["loss/total"],
                     f"kl {values['loss/kl']:.4f} | " if "loss/kl" in values else "", values["lr"], values["throughput/tokens_per_s"],
                     f" | MFU {values['throughput/mfu']:.1%}" if "throughput/mfu" in values else "")

    def _validation_due(self) -> bool:
        # a function of the step alone, so every rank agrees (the evaluation ends in a collective);
        # also when stopping for a signal, so a preempted run logs what an uninterrupted one does
        every = self.cfg.log.eval_every_steps
        return self.validator is not None and (self.state.step == self.num_steps or bool(every and self.state.step % every == 0))

    def _validate(self, metrics: Metrics) -> None:
        values = self.validator(self.engine)
        self.state.val = {"step": self.state.step, **values}
        metrics.scalars(self.state.step, values)
        if self.d.rank == 0:
            log.info("%s", evaluate.console_line(self.state.step, values))

    def save(self) -> Path:
        self.state.data = self.stream.state_dict()
        trainer_state = {"trainer": {k: v for k, v in vars(self.state).items() if k != "data"}, "data": self.state.data,
                         "config": to_dict(self.cfg), "resume": self.resume_settings}
        path = checkpoint.save(self.engine, self.run_dir, self.state.step, trainer_state, self.cfg.checkpoint.keep)
        if self.rundir is not None and self.rundir.staging:  # --overwrite: the new run replaces the old one once it can be resumed
            self.run_dir = rundir.commit_on_rank0(self.rundir, self.d.rank)
            path = self.run_dir / "checkpoints" / path.name
            if self.d.rank == 0:
                log.info("--overwrite: the new run now is %s (the old one was replaced at its first checkpoint)", self.run_dir)
        return path

    def _install_signal_handlers(self) -> None:
        def request_stop(signum: int):
            # Only a flag: the step and any checkpoint being written go on undisturbed, however many
            # signals arrive (a SIGKILL mid-write leaves the previous checkpoint as `latest`).
            again, self.stop_requested = self.stop_requested, True  # first: a nested call must see it
            if again:
                log.warning("received %s again: already stopping; the checkpoint is written whole first", signal_name(signum))
            else:
                log.warning("received %s: will checkpoint after the current step and stop", signal_name(signum))

        on_stop_signal(request_stop)


# ------------------------------------------------------------------------------------- set-up


def _prepare_run_dir(cfg: DistillConfig, run_dir: Path, resume: bool, d: eng.Dist, student, tokenizer_dir: Path, ds_config: dict) -> None:
    if checkpoint.latest_tag(run_dir / "checkpoints") is not None and not resume:
        raise UserError(f"{run_dir} already holds checkpoints; pass --resume to continue it, --overwrite to replace it "
                        "(swapped in at the new run's first checkpoint), or choose another --out")
    if d.rank == 0:
        save(cfg, run_dir / "run_config.yaml")
        (run_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=1))
        (run_dir / "environment.json").write_text(json.dumps({"versions": versions(), "device": device_info(),
                                                              "world_size": d.world_size, "backend": d.backend,
                                                              "started_by": command_line()}, indent=1))
        student.config.save_pretrained(str(run_dir / "student_config"))
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(run_dir / "tokenizer"))  # the student's
    dist.barrier()


def _resume_tag(run_dir: Path, d: eng.Dist) -> str | None:
    """Rank 0 picks the newest intact checkpoint (newer damaged ones are set aside and reported); all ranks learn it."""
    box = list(checkpoint.choose_tag(run_dir)) if d.rank == 0 else [None, []]
    tag, notes = rundir.broadcast(box)
    if d.rank == 0:
        for note in notes:
            log.warning("--resume: %s", note)
        if notes:
            log.warning("--resume: continuing from %s", tag or "the beginning (no intact checkpoint left)")
    return tag


def _inputs(cfg: DistillConfig) -> list[Path]:
    """What the run reads: --out may not be, hold or lie inside any of it."""
    from ds_distil.data.tokenizer import looks_like_path

    names = [cfg.data.shards, cfg.deepspeed.config, cfg.teacher.config, cfg.teacher.pretrained, cfg.student.pretrained,
             cfg.student.vocab]
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


def setup(cfg: DistillConfig, out: str | Path, resume: bool = False, overwrite: bool = False) -> Trainer:
    if resume and overwrite:
        raise UserError("--resume continues the run in --out, --overwrite replaces it: pass one of them")
    d = eng.init_distributed()
    rd = rundir.claim_on_rank0(d.rank, lambda: rundir.claim(out, "distill", overwrite=overwrite, inputs=_inputs(cfg),
                                                             ignore=("hostfile",), in_place=True))
    try:
        trainer = _setup(cfg, rd, resume, d)
    except BaseException:
        if d.rank == 0:
            rd.abort()  # nothing of the old output was touched; a directory we made and left empty goes
            rd.release()
        raise
    trainer.rundir = rd
    return trainer


def _setup(cfg: DistillConfig, rd: rundir.RunDir, resume: bool, d: eng.Dist) -> Trainer:
    run_dir = rd.path
    manifest = load_manifest(cfg.data.shards)
    tok = manifest.tokenizer
    vocab, pad = int(tok["vocab_size"]), int(tok["pad_id"])
    vmap = None
    if cfg.student.vocab:  # a target-language vocabulary (ds_distil/data/vocab.py)
        vmap = load_vocab_map(cfg.student.vocab)
        vmap.check_shards(manifest)
    _check_vocabularies(cfg, manifest, vmap)

    torch.manual_seed(cfg.train.seed)  # the same initial student on every rank
    multiple = cfg.perf.pad_vocab_multiple
    teacher = build_teacher(cfg.teacher, vocab, pad, 1 if vmap else multiple)
    s_vocab, s_pad, kept, translation = vocab, pad, None, {}
    if vmap is not None:  # the teacher's LM head over the kept rows only; the student over the kept ids
        s_vocab, s_pad, kept, translation = prepare_trimmed_run(vmap, teacher, pad, int(tok["unk_id"]), multiple)
    student = build_student(cfg.student, s_vocab, s_pad, teacher, multiple, teacher_rows=kept)
    if cfg.loss.a_hidden > 0 and teacher is not None and teacher.config.hidden_size != student.config.hidden_size:
        raise UserError(f"loss.a_hidden needs equal hidden sizes (teacher {teacher.config.hidden_size}, student "
                        f"{student.config.hidden_size}); set loss.a_hidden=0")
    check_seq_len(manifest.seq_len, teacher, student, cfg)
    torch.manual_seed(cfg.train.seed + d.rank)  # dropout differs between ranks

    stream = MLMStream(manifest, cfg.data, batch_size=cfg.train.micro_batch_size, rank=d.rank, world_size=d.world_size,
                       keep_ids=vmap.is_kept() if vmap else None)
    num_steps = eng.total_steps(cfg.train, stream.steps_per_epoch)
    ds_config = eng.build_ds_config(cfg, d.world_size, num_steps, d.device)
    settings = resume_settings.fingerprint(cfg, manifest, d.world_size, ds_config, MASKING_RULE)
    if vmap is not None:  # the vocabulary's content, not only its path
        settings["student.vocab_kept_sha256"] = vmap.content_sha256
    tag = _resume_tag(run_dir, d) if resume else None
    if tag is not None:  # refused before anything is written or loaded
        saved = resume_settings.saved_fingerprint(json.loads((run_dir / "checkpoints" / tag / "trainer_state.json").read_text()))
        resume_settings.check(saved, settings, tag, derived=False)
        checkpoint.check_world_size(run_dir, tag, d.world_size)  # with its own way out (export, resize)
        resume_settings.check(saved, settings, tag, derived=True)
    _prepare_run_dir(cfg, run_dir, resume, d, student, vmap.directory if vmap else manifest.tokenizer_dir, ds_config)
    t_params, s_params = count_parameters(teacher), count_parameters(student)
    model_engine = eng.initialize(MaskedLM(student, s_vocab), ds_config, cfg.train.weight_decay)
    t_dtype = eng.teacher_dtype(cfg.teacher.dtype, d.device)
    teacher = eng.place_teacher(teacher, d.device, t_dtype)
    if translation.get("full_head") is not None:
        translation["full_head"].to(device=d.device, dtype=t_dtype)

    state = TrainerState()
    if tag is not None:
        saved = checkpoint.load(model_engine, run_dir, tag)
        state = TrainerState(**saved["trainer"], data=saved["data"])
        stream.load_state_dict(saved["data"])
        log.info("resumed from step %d (%s; epoch %d, micro batch %d of it)", state.step, tag, stream.position.epoch, stream.position.step)
    elif resume:
        log.info("--resume: no complete checkpoint in %s yet; starting from the beginning", run_dir)

    if d.rank == 0:
        t = cfg.train
        global_batch = t.micro_batch_size * t.grad_accum_steps * d.world_size
        source = cfg.teacher.pretrained or cfg.teacher.config or (f"preset {cfg.teacher.preset}" if cfg.teacher.preset else None)
        log.info("distill: %d rank(s), backend %s, device %s, student precision %s", d.world_size, d.backend, d.device, eng.precision(ds_config))
        log.info("perf: vocabulary rows %d (padded to a multiple of %d), torch.compile %s, fused AdamW %s", student.config.vocab_size,
                 cfg.perf.pad_vocab_multiple, "on" if eng.compile_enabled(cfg.perf, d.device) else "off",
                 "on" if ds_config["optimizer"]["params"].get("fused") else "off")
        log.info("teacher: %s", f"{source}, {t_params['total'] / 1e6:.1f}M params, {str(t_dtype).removeprefix('torch.')}, frozen, eval"
                 if teacher is not None else "none (MLM only)")
        if vmap is not None:
            log.info("vocabulary: %s, %d of %d tokens kept; the teacher's head and the KL run over them", vmap.directory, vmap.size, vocab)
        sc = student.config
        arch = f"{sc.num_hidden_layers} layers x {sc.hidden_size} hidden, {sc.intermediate_size} FFN, {sc.num_attention_heads} heads"
        log.info("student: %s (%s), %.1fM params (%.1fM embeddings), %.1fM trainable",
                 cfg.student.pretrained or cfg.student.preset or "custom", arch,
                 s_params["total"] / 1e6, s_params["embeddings"] / 1e6, s_params["trainable"] / 1e6)
        log.info("batch: micro %d x accumulation %d x %d rank(s) = %d samples (%d tokens) per optimizer step",
                 t.micro_batch_size, t.grad_accum_steps, d.world_size, global_batch, global_batch * stream.seq_len)
        log.info("data: %s, %s train samples (%s tokens) in %d shards, %d micro batches per epoch per rank",
                 cfg.data.shards, f"{stream.n_samples:,}", f"{manifest.data['splits']['train']['tokens']:,}", len(stream.shards),
                 stream.steps_per_epoch)
        log.info("run: %d optimizer steps (%.2f epochs) from step %d; loss %s", num_steps,
                 num_steps * t.grad_accum_steps / stream.steps_per_epoch, state.step,
                 f"{cfg.loss.a_kl} * T^2 * KL + {cfg.loss.a_mlm} * MLM (T={cfg.loss.temperature})" if teacher is not None else "MLM")
    trainer = Trainer(cfg, run_dir, d, stream, model_engine, teacher, num_steps, state, s_vocab, translation)
    trainer.resume_settings = settings
    return trainer


def run_distill(cfg: DistillConfig, out: str | Path, resume: bool = False, overwrite: bool = False) -> int:
    trainer = setup(cfg, out, resume, overwrite)
    rank0 = trainer.d.rank == 0
    try:
        status = trainer.fit()
        export_error = None
        if status == 0 and cfg.checkpoint.export:
            if rank0:
                try:
                    path = checkpoint.export_student(trainer.run_dir)
                    log.info("student exported to %s (AutoModelForMaskedLM.from_pretrained loads it)", path)
                except UserError as e:
                    export_error = str(e)
            export_error = rundir.broadcast([export_error])[0]
    except BaseException:
        if rank0:
            trainer.rundir.abort()  # --overwrite before the first checkpoint: the new run goes, the old one stays
        raise
    finally:
        if rank0:
            trainer.rundir.release()
    ignore_stop_signals()  # the work is saved; from here the process only exits
    if export_error:
        raise UserError(f"training finished and its checkpoints are saved, but the export failed: {export_error}")
    return status
