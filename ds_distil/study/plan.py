"""The plan of a study: its stages, in run order, and plan.json, the rows of the paper's tables.

A study (ds_distil/schema/study.py) becomes a list of **stages**, each one of our CLI commands run as a
subprocess: build the NLI set, prepare the shards (one set per data fraction), pretrain or
condition the teacher, distil every student and ablation variant, finetune every model on every
task and seed, write the report with the paper's tables. A stage names its command line, its
output directory, the stages it depends on and the config files it reads (their contents go into
its key, ds_distil/study/keys.py). `validate` parses every stage's command with the command line's
own parser before anything runs; `plan_document` is plan.json, what the report reads.
ds_distil/study/runner.py runs the stages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

from ds_distil.core.config import to_dict
from ds_distil.core.errors import UserError
from ds_distil.distill.objectives import name_of
from ds_distil.schema import commands
from ds_distil.schema.study import TASK_DIRS, Study, overrides_of


@dataclasses.dataclass
class Stage:
    name: str
    args: list[str]  # the ds-distil command line after `ds-distil`
    out: Path
    deps: list[str] = dataclasses.field(default_factory=list)
    files: list[str] = dataclasses.field(default_factory=list)  # config files read: their content goes into the key
    ranks: int = 1
    key: str = ""

    @property
    def command(self) -> str:
        return self.args[0]

    @property
    def resumable(self) -> bool:
        return self.command in ("distill", "teacher-cache", "finetune")  # they continue in place with --resume


# ------------------------------------------------------------------------------------ the plan


def _fraction_tag(f: float) -> str:
    return f"f{round(f * 100):03d}"


def _prepare_stage(f: float) -> str:
    """The name of the stage that prepares the shards of data fraction `f`."""
    return f"prepare/{_fraction_tag(f)}"


def _data_dir(study: Study) -> Path:
    from ds_distil.data.tasks import default_data_dir

    return Path(study.data_dir) if study.data_dir else default_data_dir()


def build_plan(study: Study, out: Path) -> tuple[list[Stage], list[dict]]:
    """(stages in run order, rows of the tables). A row is a model finetuned on every task and seed."""
    data = _data_dir(study)
    p, ft = study.prepare, study.finetune
    corpus = p.corpus or str(data / "corpus" / "tl_corpus_combined.txt")
    tokenizer = p.tokenizer or str(data / "mbert_tokenizer")
    stages: list[Stage] = []
    rows: list[dict] = []

    # --- data: the NLI set, the shards of every fraction
    task_dirs = {}
    for task, t in ft.tasks.items():
        if t.data_dir:
            task_dirs[task] = t.data_dir
        elif task == "nli":
            stages.append(Stage("data/nli", ["tasks", "build-nli", "--articles", str(data / "fakenews" / "full.csv"),
                                             "--out", str(out / "data" / "nli"), "--seed", "0"], out / "data" / "nli"))
            task_dirs[task] = str(out / "data" / "nli")
        else:
            task_dirs[task] = str(data / TASK_DIRS[task])
    distilling = study.teacher.source != "none"  # none: finetuning rows only (task_kd, baselines.models): no shards, no teacher
    fractions = [1.0] + [f for f in study.ablations.data_fractions if f != 1.0] if distilling else []
    prep_deps = []
    if study.vocab.enabled:  # the corpus in the full vocabulary, the tokens it uses, then everything in those
        full = out / "shards" / "full-vocab"
        stages.append(Stage("prepare/full-vocab", ["prepare", "--input", corpus, "--tokenizer", tokenizer, "--out", str(full),
                                                   "--seq-len", str(p.seq_len), "--seed", str(p.seed), *overrides_of(p.settings)], full))
        report = [f"report_data={data}"] if study.data_dir else []  # its [UNK] report on the study's downstream sets
        stages.append(Stage("vocab", ["vocab", "--shards", str(full), "--out", str(out / "vocab"), *report,
                                      *overrides_of(study.vocab.settings)],
                            out / "vocab", deps=["prepare/full-vocab"]))
        tokenizer, prep_deps = str(out / "vocab"), ["vocab"]
    shards = {}
    for f in fractions:
        shards[f] = out / "shards" / _fraction_tag(f)
        stages.append(Stage(_prepare_stage(f), ["prepare", "--input", corpus, "--tokenizer", tokenizer, "--out", str(shards[f]),
                                                "--seq-len", str(p.seq_len), "--fraction", str(f), "--seed", str(p.seed),
                                                *overrides_of(p.settings)], shards[f], deps=list(prep_deps)))
    main, prep_main = shards.get(1.0), _prepare_stage(1.0)  # the main shard set (the whole corpus) and its stage

    # --- the teacher: hub weights, or MLM from random weights on the corpus
    t = study.teacher
    if t.source == "none":
        teacher_model, teacher_stage, teacher_run, teacher_label = None, [], None, None
    elif t.source == "hub":
        teacher_model, teacher_stage, teacher_run = t.hub, [], None
        teacher_label = t.label or f"mBERT ({t.hub}, hub weights)"
    else:
        teacher_run = out / "teacher"
        stages.append(_distill(study, "teacher", teacher_run, t.config,
                               [*overrides_of(t.settings), f"data.shards={main}", "teacher.enabled=false"], [prep_main]))
        teacher_model, teacher_stage = str(teacher_run / "student"), ["teacher"]
        teacher_label = t.label or "Teacher (MLM from random weights on the corpus; stand-in for mBERT)"
    ablation_tasks = study.ablations.tasks or list(ft.tasks)

    def finetunes(row: dict, tasks: list[str] | None = None) -> None:
        for task in tasks or ft.tasks:
            for seed in ft.seeds:
                stages.append(_finetune(study, row, task, task_dirs[task], seed, out, tokenizer))

    if distilling:
        rows.append(_row("teacher", teacher_label, "teacher", teacher_model, "pretrained", teacher_stage, teacher_run, tables=[2, 3, 4, 5]))
        finetunes(rows[-1])

    # --- students (Table 2), their From Scratch rows and the other baselines
    caches = _Caches(study, out, stages)

    def distill_student(sid: str, settings: list[str], shard_dir: Path, teacher: str, deps: list[str], signal: str = "study") -> Path:
        """signal: study (the sampled cache where study.cache is on and the objective can use it, else the live teacher),
        live (the live teacher, under the cached runs' static masks: Table 7), top_k (a top-k cache: Table 7)."""
        run = out / "students" / sid
        common = [*overrides_of(study.distill.settings), *settings, f"data.shards={shard_dir}", f"teacher.pretrained={teacher}"]
        if study.cache.enabled:
            common, deps = caches.wire(run, common, deps, shard_dir, teacher, signal)
        stages.append(_distill(study, f"distill/{sid}", run, study.distill.config, common, deps))
        return run

    for sid, s in study.students.items():
        run = distill_student(sid, overrides_of(s.settings), main, teacher_model, [prep_main, *teacher_stage])
        rows.append(_row(sid, s.label, "student", str(run / "student"), "pretrained", [f"distill/{sid}"], run, tables=[2, 3, 4, 5, 7],
                         student=sid))
        finetunes(rows[-1])
    if study.baselines.from_scratch:
        for sid, s in study.students.items():
            # the student's architecture with random weights: its exported config.json, so any size works
            arch = str(out / "students" / sid / "student" / "config.json")
            rows.append(_row(f"{sid}@scratch", f"From Scratch: {s.label}'s architecture, random weights", "scratch", arch, "blank",
                             [f"distill/{sid}"], None, tables=[2], student=sid))
            finetunes(rows[-1])
    for bid, b in study.baselines.models.items():
        from ds_distil.schema.finetune import FT_PRESETS

        blank = b.model in FT_PRESETS
        rows.append(_row(bid, b.label, "baseline", b.model, "blank" if blank else "pretrained", [], None, tables=[2]))
        finetunes(rows[-1])

    # --- ablations: data fractions (Table 3), conditioned teacher (Table 4), embeddings (Table 5), objectives (Table 6)
    ab = study.ablations
    chosen = ab.students or list(study.students)
    for sid in chosen:
        s = study.students[sid]
        for f in ab.data_fractions:
            vid = f"{sid}@data{round(f * 100)}"
            run = distill_student(vid, overrides_of(s.settings), shards[f], teacher_model, [_prepare_stage(f), *teacher_stage])
            rows.append(_row(vid, f"{s.label}, {f:.0%} of the corpus", "variant", str(run / "student"), "pretrained", [f"distill/{vid}"],
                             run, tables=[3], student=sid, variant={"fraction": f}))
            finetunes(rows[-1], ablation_tasks)
    if t.condition.enabled:
        cond_run = out / "teacher-cond"
        stages.append(_distill(study, "teacher-cond", cond_run, t.condition.config,
                               [*overrides_of(t.condition.settings), f"data.shards={main}", "teacher.enabled=false",
                                f"student.pretrained={teacher_model}", "student.preset=null"], [prep_main, *teacher_stage]))
        rows.append(_row("teacher-cond", f"{teacher_label}, MLM-conditioned on the corpus", "teacher-cond", str(cond_run / "student"),
                         "pretrained", ["teacher-cond"], cond_run, tables=[4]))
        finetunes(rows[-1], ablation_tasks)
        if ab.conditioned_teacher:
            for sid in chosen:
                s = study.students[sid]
                vid = f"{sid}@cond"
                run = distill_student(vid, overrides_of(s.settings), main, str(cond_run / "student"), [prep_main, "teacher-cond"])
                rows.append(_row(vid, f"{s.label}, from the conditioned teacher", "variant", str(run / "student"), "pretrained",
                                 [f"distill/{vid}"], run, tables=[4], student=sid, variant={"conditioned": True}))
                finetunes(rows[-1], ablation_tasks)
    for sid in chosen:
        s = study.students[sid]
        for name, settings in ab.embeddings.items():
            vid = f"{sid}@emb-{name}"
            run = distill_student(vid, [*overrides_of(s.settings), *overrides_of(settings)], main, teacher_model,
                                  [prep_main, *teacher_stage])
            rows.append(_row(vid, f"{s.label}, embeddings: {name}", "variant", str(run / "student"), "pretrained", [f"distill/{vid}"],
                             run, tables=[5], student=sid, variant={"embeddings": name, "settings": overrides_of(settings)}))
            finetunes(rows[-1], ablation_tasks)

    for sid in chosen:
        s = study.students[sid]
        for name, settings in ab.objectives.items():
            vid = f"{sid}@obj-{name}"
            run = distill_student(vid, [*overrides_of(s.settings), *overrides_of(settings)], main, teacher_model,
                                  [prep_main, *teacher_stage])
            rows.append(_row(vid, f"{s.label}, objective: {name}", "variant", str(run / "student"), "pretrained", [f"distill/{vid}"],
                             run, tables=[6], student=sid, variant={"objective": name, "settings": overrides_of(settings)}))
            finetunes(rows[-1], ablation_tasks)

    for sid in (chosen if ab.teacher_signal else []):  # Table 7: the same student, teacher and steps, another teacher signal
        s = study.students[sid]
        for signal, label in (("live", "the live teacher (same static masks)"), ("top_k", f"a top-{study.cache.k} cache")):
            vid = f"{sid}@{signal.replace('_', '')}"
            run = distill_student(vid, overrides_of(s.settings), main, teacher_model, [prep_main, *teacher_stage], signal)
            rows.append(_row(vid, f"{s.label}, from {label}", "variant", str(run / "student"), "pretrained", [f"distill/{vid}"], run,
                             tables=[7], student=sid, variant={"signal": signal}))
            finetunes(rows[-1], ablation_tasks)
    for row in rows:  # the cache each distilled row read (the report's saved-time section)
        row["cache"] = caches.used.get(f"distill/{row['id']}")
    _task_kd(study, out, task_dirs, tokenizer, stages, rows)

    # --- the report: every finetuning result, the paper's tables
    ft_names = [s.name for s in stages if s.command == "finetune"]
    stages.append(Stage("report", ["report", "--runs", str(out / "finetune"), "--out", str(out / "report"), "--study",
                                   str(out / "plan.json")], out / "report", deps=ft_names, files=[str(out / "plan.json")]))
    _check_unique(stages)
    return stages, rows


class _Caches:
    """The study's teacher caches: one `teacher-cache` stage per teacher, shard set and what the targets depend on
    (temperature, masks, vocabulary, method), appended to the plan before the first student that reads it."""

    def __init__(self, study: Study, out: Path, stages: list[Stage]):
        self.study, self.out, self.stages = study, out, stages
        self.parser = commands.build_parser()
        self.made: dict[tuple, tuple[str, Path]] = {}
        self.used: dict[str, str] = {}  # distill stage -> the cache stage it reads

    def wire(self, run: Path, common: list[str], deps: list[str], shard_dir: Path, teacher: str, signal: str):
        """A student's overrides and dependencies with its teacher signal: the cache's, or the live teacher's under the same
        static masks (Table 7), or unchanged where its objective needs the live teacher (TinyBERT, MiniLMv2)."""
        c = self.study.cache
        cfg = self._config(run, common)
        if cfg is None or not _can_use_cache(cfg):
            return common, deps  # the live teacher; a command that does not parse is named by validate()
        static = ["data.masking=static", f"data.mask_copies={c.mask_copies}"]
        if signal == "live":
            return [*common, *static], deps
        name, directory = self._stage(cfg, shard_dir, teacher, "top_k" if signal == "top_k" else "sampled", deps)
        self.used[f"distill/{run.name}"] = name
        return [*common, *static, f"teacher.cache={directory}", f"teacher.cache_validation={c.validation}"], [*deps, name]

    def _config(self, run: Path, common: list[str]):
        args = ["distill", *[a for f in self.study.distill.config for a in ("--config", f)], "--out", str(run), *common]
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                return commands.stage_config(self.parser.parse_args(args))
        except (SystemExit, UserError):
            return None

    def _stage(self, cfg, shard_dir: Path, teacher: str, method: str, deps: list[str]) -> tuple[str, Path]:
        c, d = self.study.cache, cfg.data
        made_for = (teacher, str(shard_dir), method, cfg.loss.temperature, d.seed, d.mlm_probability, d.mask_token_prob,
                    d.random_token_prob, cfg.student.vocab, cfg.teacher.dtype)
        if made_for not in self.made:
            tag = f"{'teacher-cond' if teacher.endswith('teacher-cond/student') else 'teacher'}-{shard_dir.name}"
            tag += "-topk" if method == "top_k" else ""
            n = sum(1 for name, _ in self.made.values() if name.startswith(f"cache/{tag}"))
            tag += f"-{n + 1}" if n else ""
            directory = self.out / "caches" / tag
            args = ["teacher-cache", "--out", str(directory), f"data.shards={shard_dir}", f"teacher.pretrained={teacher}",
                    f"teacher.dtype={cfg.teacher.dtype}", f"cache.method={method}", f"cache.k={c.k}",
                    f"cache.temperature={cfg.loss.temperature}", f"data.mask_copies={c.mask_copies}", f"data.seed={d.seed}",
                    f"data.mlm_probability={d.mlm_probability}", f"data.mask_token_prob={d.mask_token_prob}",
                    f"data.random_token_prob={d.random_token_prob}", *([f"vocab={cfg.student.vocab}"] if cfg.student.vocab else []),
                    *overrides_of(c.settings)]
            self.stages.append(Stage(f"cache/{tag}", args, directory, deps=list(deps), ranks=self.study.ranks))
            self.made[made_for] = (f"cache/{tag}", directory)
        return self.made[made_for]


def _can_use_cache(cfg) -> bool:
    """A run whose objective reads only the teacher's output distribution at the masked positions (what a cache holds)."""
    return cfg.teacher.enabled and name_of(cfg) == "kd" and cfg.loss.a_hidden == 0 and cfg.loss.a_kl > 0


def _row(rid, label, kind, model, recipe, deps, run_dir, tables, student=None, variant=None) -> dict:
    return {"id": rid, "label": label, "kind": kind, "model": model, "recipe": recipe, "deps": deps,
            "run_dir": str(run_dir) if run_dir else None, "tables": tables, "student": student, "variant": variant or {}}


def _distill(study: Study, name: str, run: Path, configs: list[str], overrides: list[str], deps: list[str]) -> Stage:
    args = ["distill"] + [a for c in configs for a in ("--config", c)] + ["--out", str(run), *overrides]
    return Stage(name, args, run, deps=deps, files=list(configs), ranks=study.ranks)


def _finetune(study: Study, row: dict, task: str, data_dir: str, seed: int, out: Path, tokenizer: str, settings: tuple[str, ...] = (),
              deps: tuple[str, ...] = ()) -> Stage:
    """`settings`: the row's own on this task (after the study's and the task's); `deps`: its stages on this task."""
    ft = study.finetune
    recipe = ft.blank_recipe if row["recipe"] == "blank" else ft.pretrained_recipe
    run = out / "finetune" / row["id"] / task / f"seed{seed}"
    extra = [f"task.tokenizer={tokenizer}"] if row["recipe"] == "blank" else []  # weights-free models take the study's tokenizer
    args = ["finetune", "--model", row["model"], "--task", task, "--out", str(run), "--config", recipe,
            *overrides_of(ft.settings), *overrides_of(ft.tasks[task].settings), *settings, f"task.data_dir={data_dir}", *extra,
            f"train.seed={seed}", f"model_name={row['id']}"]
    deps = list(row["deps"]) + list(deps) + (["data/nli"] if task == "nli" and data_dir == str(out / "data" / "nli") else [])
    return Stage(f"finetune/{row['id']}/{task}/seed{seed}", args, run, deps=deps, files=[recipe], ranks=study.ranks)


KD_VARIANTS = (  # task_kd's rows per student: (id suffix, label suffix, taught by the teacher, from the transfer set)
    ("", "alone (held-back rows left out)", False, False),
    ("@kd", "+ KD on its labelled rows", True, False),
    ("@kd-transfer", "+ KD + the held-back rows as a transfer set", True, True),
)


def _task_kd(study: Study, out: Path, task_dirs: dict, tokenizer: str, stages: list[Stage], rows: list[dict]) -> None:
    """Table 8: the task teacher finetuned on every task (one seed, every labelled row), then each student alone, with KD
    and with KD + a transfer set, on the same labelled rows (the labels of task_kd.transfer_from_train's rows held back),
    over the study's seeds."""
    from ds_distil.schema.finetune import random_weights

    k, ft = study.task_kd, study.finetune
    if k.teacher is None:
        return
    teacher = _row("kd-teacher", k.teacher.label, "kd-teacher", k.teacher.model, "blank" if random_weights(k.teacher.model) else "pretrained",
                   [], None, tables=[8])
    rows.append(teacher)
    runs = {}
    for task in ft.tasks:
        stage = _finetune(study, teacher, task, task_dirs[task], k.teacher_seed, out, tokenizer, tuple(overrides_of(k.teacher.settings)))
        stages.append(stage)
        runs[task] = stage
    for sid, m in k.students.items():
        for suffix, label, taught, transfer in KD_VARIANTS:
            row = _row(f"{sid}{suffix}", f"{m.label} {label}", "kd-student", m.model, "blank" if random_weights(m.model) else "pretrained",
                       [], None, tables=[8], student=sid, variant={"kd": taught, "transfer": transfer})
            rows.append(row)
            for task in ft.tasks:
                settings = [*overrides_of(m.settings), f"task.transfer_from_train={k.transfer_from_train[task]}"]
                deps = ()
                if taught:
                    settings += [*overrides_of(k.settings), f"teacher={runs[task].out / 'model'}", f"kd.transfer={'true' if transfer else 'false'}"]
                    deps = (runs[task].name,)
                for seed in ft.seeds:
                    stages.append(_finetune(study, row, task, task_dirs[task], seed, out, tokenizer, tuple(settings), deps))


def _check_unique(stages: list[Stage]) -> None:
    seen = set()
    for s in stages:
        if s.name in seen:
            raise UserError(f"two stages are named {s.name}: rename a student, baseline or variant")
        seen.add(s.name)


def validate(stages: list[Stage], study_path: Path) -> dict[str, object]:
    """Parse every stage's command with the command line's own parser and config schemas, before anything runs:
    an unknown key or a wrong type in a study's settings is refused here, naming the stage. Returns each stage's typed
    config (None for commands without one)."""
    parser = commands.build_parser()
    configs = {}
    for s in stages:
        try:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                args = parser.parse_args(s.args)
        except SystemExit:
            raise UserError(f"study {study_path}: stage {s.name}: {err.getvalue().strip().splitlines()[-1]}") from None
        try:
            configs[s.name] = commands.stage_config(args)
        except UserError as e:
            raise UserError(f"study {study_path}: stage {s.name}: {e}") from None
    return configs


def plan_document(study: Study, stages: list[Stage], rows: list[dict]) -> str:
    """plan.json: what the report needs (rows, tasks, seeds, the sizing note), deterministic so its key is stable."""
    doc = {"study": to_dict(study), "rows": rows, "tasks": list(study.finetune.tasks), "seeds": study.finetune.seeds,
           "ablation_tasks": study.ablations.tasks or list(study.finetune.tasks),
           "stages": [{"name": s.name, "out": str(s.out), "command": s.command} for s in stages]}
    return json.dumps(doc, indent=1)  # insertion order, which is deterministic (and `estimates` is first-match)
