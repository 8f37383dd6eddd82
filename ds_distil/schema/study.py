"""A study: one YAML file that describes a whole reproduction of the paper (configs/studies/*.yaml).

This module reads and checks the file (typed sections, unknown keys refused naming the key, like
every config of ours) and expands it into **rows**: the models whose finetuning scores fill the
paper's tables. ds_distil/study/plan.py turns the rows into stages (commands) and
ds_distil/study/runner.py runs them.

What a study holds (every section is optional except `name` and `teacher.source`):

* `prepare`: the corpus, tokenizer and sequence length of the shards; one shard set per data fraction.
* `vocab`: optionally, a target-language vocabulary chosen from the corpus (`ds-distil vocab`), in
  which the whole study then runs (the shards are prepared again with it): a CPU lever, since the
  LM heads over mBERT's 119,547 rows dominate the cost of small models.
* `teacher`: `source: hub` distils from `teacher.hub` (bert-base-multilingual-cased) where the hub is
  reachable; `source: pretrain` pretrains a stand-in teacher with MLM from random weights on the
  corpus first (no weights needed). The study decides; nothing probes the network. `condition`:
  MLM-condition the teacher on the corpus before distilling from it (Table 4).
* `cache`: pay for the teacher once: a `ds-distil teacher-cache` stage per teacher and shard set, read by every
  student whose objective can distil from it (kd), instead of each running the teacher.
* `distill`: settings of every student run; `students`: the students (Table 2), each a name,
  a label and settings (`student.*`, `train.*`, ...).
* `ablations`: applied to `ablations.students`: distillation on fractions of the corpus
  (Table 3), from the conditioned teacher (Table 4), with embeddings copied from the teacher and
  copied + frozen (Table 5), and, beyond the paper, with other distillation objectives (Table 6:
  TinyBERT, MiniLMv2) and (Table 7) with the live teacher and a top-k cache beside the sampled cache.
* `baselines`: `from_scratch` (each student's architecture finetuned from random weights, the
  paper's From Scratch row) and `models` (mBERT / DistilmBERT / Tagalog-RoBERTa: architecture
  presets with random weights, which give the runtime and a blank model's score, or hub names /
  directories with weights).
* `finetune`: the recipes (`configs/finetune/blank.yaml` for random weights, `pretrained.yaml` for
  pretrained and distilled encoders), the seeds, and the tasks with their own settings.
* `task_kd`: task distillation (Table 8): a teacher finetuned on every task, and students finetuned alone with the
  labels of some training rows held back, with KD from the teacher, and with KD + those rows as a transfer set.
  With `teacher.source: none` the study distils nothing (no shards, no pretraining): finetuning rows only.

Settings are mappings of dotted keys (`train.max_steps: 600`) or nested sections, passed to the
command as `key=value` overrides, after the config files and before what the study itself sets
(shards, teacher path). Paths are relative to the directory the study is run from (the checkout),
like every config of ours. `sized_down` says, above every table, how and why the study is smaller
than the paper; `estimates` gives the expected minutes per stage (glob patterns), summed by `--dry-run`, and
`estimates_probe` the machine they were measured on and its time for a fixed probe step (ds_distil/study/estimate.py),
by which they are scaled to the machine a study runs on.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from ds_distil.core.config import ConfigError, from_dict, load_dict, parse_value, setting
from ds_distil.core.errors import UserError

TASK_NAMES = ("hatespeech", "pos", "ner", "nli")
TASK_DIRS = {"hatespeech": "hatespeech", "pos": "ud_pos", "ner": "uner_ner"}  # nli is built from fakenews/full.csv


@dataclasses.dataclass
class PrepareStudy:
    corpus: str | None = setting("corpus text file(s) (default: DATA/corpus/tl_corpus_combined.txt)", default=None)
    tokenizer: str | None = setting("tokenizer directory or hub name (default: DATA/mbert_tokenizer)", default=None)
    seq_len: int = setting("tokens per sample", default=128)
    seed: int = setting("seed of the validation split and the fractions", default=0)
    settings: dict[str, Any] = setting("more `ds-distil prepare` keys", default_factory=dict)


@dataclasses.dataclass
class VocabStudy:
    enabled: bool = setting("choose a target-language vocabulary from the corpus (`ds-distil vocab`) and run the whole study in it "
                            "(teacher, students, blank models): every token the corpus uses is kept, so the corpus tokenizes as "
                            "before, and the LM heads and embeddings shrink", default=False)
    settings: dict[str, Any] = setting("`ds-distil vocab` keys (min_count, coverage, max_size, single_chars)", default_factory=dict)


@dataclasses.dataclass
class ConditionStudy:
    enabled: bool = setting("MLM-condition the teacher on the corpus before distilling from it (Table 4)", default=False)
    config: list[str] = setting("distill config file(s) of the conditioning run", default_factory=list)
    settings: dict[str, Any] = setting("its settings (train.max_steps, train.lr, ...)", default_factory=dict)


@dataclasses.dataclass
class TeacherStudy:
    source: Literal["hub", "pretrain", "none"] = setting("hub: the pretrained hub model `hub`; pretrain: MLM from random weights on "
                                                         "the corpus; none: no distillation at all (a study of finetuning "
                                                         "alone, e.g. task distillation: `task_kd`)")
    hub: str = setting("hub name or local directory of the pretrained teacher (source: hub)", default="bert-base-multilingual-cased")
    label: str | None = setting("the teacher's row name (default: mBERT, or a stand-in description)", default=None)
    config: list[str] = setting("distill config file(s) of the pretraining run (source: pretrain; student.* is the teacher's architecture)",
                                default_factory=list)
    settings: dict[str, Any] = setting("settings of the pretraining run", default_factory=dict)
    condition: ConditionStudy = dataclasses.field(default_factory=ConditionStudy)


@dataclasses.dataclass
class CacheStudy:
    enabled: bool = setting("pay for the teacher once: run it once per teacher and shard set (`ds-distil teacher-cache`, a stage "
                            "of its own) and distil every student whose objective can (kd) from that cache: Tables 2-5, every "
                            "variant; objectives that need the live teacher's layers still run it", default=False)
    k: int = setting("sampled targets per masked token (cache.k)", default=16)
    mask_copies: int = setting("static mask copies of the training split (data.mask_copies of the cache and its students)",
                               default=1)
    validation: Literal["cache", "live"] = setting("what the cached students validate against (teacher.cache_validation): the "
                                                   "cache's held-out copy, or the live teacher (exact KL and top-1 agreement)",
                                                   default="cache")
    settings: dict[str, Any] = setting("more `ds-distil teacher-cache` keys (cache.batch_size, cache.proposal_temperature, ...)",
                                       default_factory=dict)


@dataclasses.dataclass
class DistillStudy:
    config: list[str] = setting("distill config file(s) of every student run", default_factory=list)
    settings: dict[str, Any] = setting("settings of every student run", default_factory=dict)


@dataclasses.dataclass
class StudentStudy:
    label: str = setting("row name in the tables")
    settings: dict[str, Any] = setting("this student's settings (student.preset, student.num_layers, ...)", default_factory=dict)


@dataclasses.dataclass
class AblationStudy:
    students: list[str] = setting("students that get the ablations (default: all)", default_factory=list)
    tasks: list[str] = setting("tasks the ablation rows (and the conditioned teacher) are finetuned on (default: all)", default_factory=list)
    data_fractions: list[float] = setting("distil on these fractions of the corpus too (Table 3; 1.0 is the main run)", default_factory=list)
    conditioned_teacher: bool = setting("distil from the conditioned teacher too (Table 4; needs teacher.condition.enabled)", default=False)
    embeddings: dict[str, dict[str, Any]] = setting("Table 5 variants: name -> settings, e.g. copy: {student.embeddings: teacher}",
                                                    default_factory=dict)
    teacher_signal: bool = setting("Table 7 (beyond the paper; needs cache.enabled): each student distilled also with the "
                                   "live teacher under the same static masks, and from a top-k cache of the same K (the same "
                                   "bytes), beside its row from the sampled cache", default=False)
    objectives: dict[str, dict[str, Any]] = setting("Table 6 (beyond the paper): the students distilled with other objectives: name "
                                                    "-> settings, e.g. tinybert: {loss.objective: tinybert}", default_factory=dict)


@dataclasses.dataclass
class BaselineModelStudy:
    model: str = setting("architecture preset (random weights: mbert, distilmbert, tagalog-roberta, ...) or hub name / directory")
    label: str = setting("row name in the tables")


@dataclasses.dataclass
class BaselineStudy:
    from_scratch: bool = setting("finetune each student's architecture from random weights (the From Scratch row)", default=True)
    models: dict[str, BaselineModelStudy] = setting("more rows: name -> model and label", default_factory=dict)


@dataclasses.dataclass
class TaskStudy:
    data_dir: str | None = setting("the task's data (default: its folder in DATA; nli: built from DATA/fakenews/full.csv)", default=None)
    settings: dict[str, Any] = setting("this task's finetuning settings (after the recipe)", default_factory=dict)


@dataclasses.dataclass
class FinetuneStudy:
    blank_recipe: str = setting("finetune config for models with random weights", default="configs/finetune/blank.yaml")
    pretrained_recipe: str = setting("finetune config for pretrained and distilled encoders", default="configs/finetune/pretrained.yaml")
    seeds: list[int] = setting("training seeds; the tables give mean ± std over them", default_factory=lambda: [1, 2, 3])
    tasks: dict[str, TaskStudy] = setting(f"tasks ({', '.join(TASK_NAMES)}) and their settings", default_factory=dict)
    settings: dict[str, Any] = setting("settings of every finetuning run (after the recipe, before the task's)", default_factory=dict)


@dataclasses.dataclass
class TaskKDModel:
    model: str = setting("architecture preset (random weights) or config.json file, or a hub name / directory with weights")
    label: str = setting("row name in the table")
    settings: dict[str, Any] = setting("its finetuning settings (after the recipe and finetune.settings)", default_factory=dict)


@dataclasses.dataclass
class TaskKDStudy:
    teacher: TaskKDModel | None = setting("the task teacher: finetuned on every task, one seed (teacher_seed), on all the labelled "
                                          "rows the students' runs start from (none held back); its DIR/model teaches them",
                                          default=None)
    teacher_seed: int = setting("the training seed of the teacher's run per task", default=1)
    students: dict[str, TaskKDModel] = setting("the students: each finetuned alone (labels of task.transfer_from_train's rows held "
                                               "back and left out), with KD from the teacher on its labelled rows (kd.transfer=false), "
                                               "and with KD + the held-back rows as a transfer set the teacher labels",
                                               default_factory=dict)
    transfer_from_train: dict[str, int] = setting("per task: the training rows whose labels the students do not see "
                                                  "(task.transfer_from_train)", default_factory=dict)
    settings: dict[str, Any] = setting("settings of the KD rows (kd.alpha, kd.temperature, ...)", default_factory=dict)


@dataclasses.dataclass
class EstimatesProbe:
    machine: str = setting("the machine the estimates were measured on (CPU model, cores, bf16 native or not)")
    precision: Literal["bf16", "fp32"] = setting("the precision the study's training stages ran in there")
    fp32_s: float = setting("seconds of one probe step in fp32 there (ds_distil/study/estimate.py: PROBE)")
    bf16_s: float | None = setting("seconds of one probe step in bf16 there (where bf16 was native)", default=None)

    def __post_init__(self) -> None:
        if not 0 < self.fp32_s < float("inf"):
            raise ValueError(f"fp32_s must be a positive number of seconds, got {self.fp32_s}")
        if self.bf16_s is not None and not 0 < self.bf16_s < float("inf"):
            raise ValueError(f"bf16_s must be a positive number of seconds, got {self.bf16_s}")
        if self.precision == "bf16" and self.bf16_s is None:
            raise ValueError("precision bf16 needs bf16_s, the probe's bf16 time there (or precision: fp32)")


@dataclasses.dataclass
class Study:
    name: str = setting("the study's name")
    teacher: TeacherStudy = setting("the teacher")
    description: str = setting("what the study is", default="")
    sized_down: str | None = setting("how and why this study is smaller than the paper (shown above every table); null: full size",
                                     default=None)
    data_dir: str | None = setting("the data folder (default: $DS_DISTIL_DATA or ../shared/data)", default=None)
    ranks: int = setting("processes per distill / finetune stage", default=1)
    parallel: int = setting("stages run at once where their dependencies allow (local launcher only: a GPU fits several small "
                            "finetuning runs; under SLURM the stages are srun steps run one at a time)", default=1)
    estimates: dict[str, float] = setting("expected minutes per stage, by glob pattern over stage names (first match wins)",
                                          default_factory=dict)
    estimates_probe: EstimatesProbe | None = setting("where `estimates` were measured, and that machine's probe step times: "
                                                     "the estimates are scaled by this machine's own probe", default=None)
    prepare: PrepareStudy = dataclasses.field(default_factory=PrepareStudy)
    vocab: VocabStudy = dataclasses.field(default_factory=VocabStudy)
    cache: CacheStudy = dataclasses.field(default_factory=CacheStudy)
    distill: DistillStudy = dataclasses.field(default_factory=DistillStudy)
    students: dict[str, StudentStudy] = dataclasses.field(default_factory=dict)
    ablations: AblationStudy = dataclasses.field(default_factory=AblationStudy)
    baselines: BaselineStudy = dataclasses.field(default_factory=BaselineStudy)
    finetune: FinetuneStudy = dataclasses.field(default_factory=FinetuneStudy)
    task_kd: TaskKDStudy = dataclasses.field(default_factory=TaskKDStudy)


# ------------------------------------------------------------------------------------ loading


def load_study(path: str | Path, overrides: list[str] = ()) -> Study:
    """Read, type-check and cross-check a study file; every error is one line naming the file."""
    path = Path(path)
    try:
        study = from_dict(Study, load_dict([path], list(overrides)))
    except ConfigError as e:
        raise UserError(f"study {path}: {e}") from None
    problems = check(study)
    if problems:
        raise UserError(f"study {path}: {problems[0]}")
    return study


def check(study: Study) -> list[str]:
    """What from_dict cannot see: names that must match, values in range, files that must exist."""
    out = []
    if study.ranks < 1 or study.parallel < 1:
        out.append(f"ranks and parallel must be >= 1, got {study.ranks} and {study.parallel}")
    if not study.students and study.ablations.students:
        out.append("ablations.students names students, but the study has none")
    for name in study.ablations.students:
        if name not in study.students:
            out.append(f"ablations.students: '{name}' is not one of the students ({', '.join(study.students) or 'none'})")
    for f in study.ablations.data_fractions:
        if not 0.0 < f < 1.0:
            out.append(f"ablations.data_fractions: {f} is not in (0, 1) (1.0 is the main run)")
    if study.ablations.teacher_signal and not study.cache.enabled:
        out.append("ablations.teacher_signal compares the cache with the live teacher: it needs cache.enabled: true")
    if study.cache.k < 1 or study.cache.mask_copies < 1:
        out.append(f"cache.k and cache.mask_copies must be >= 1, got {study.cache.k} and {study.cache.mask_copies}")
    if study.ablations.conditioned_teacher and not study.teacher.condition.enabled:
        out.append("ablations.conditioned_teacher needs teacher.condition.enabled: true")
    for name in [*study.students, *study.baselines.models, *study.ablations.embeddings, *study.ablations.objectives]:
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            out.append(f"'{name}': names of students, baselines and variants may hold letters, digits, '-', '_' and '.' only")
    for task in study.finetune.tasks:
        if task not in TASK_NAMES:
            out.append(f"finetune.tasks: unknown task '{task}' (known: {', '.join(TASK_NAMES)})")
    for task in study.ablations.tasks:
        if task not in study.finetune.tasks:
            out.append(f"ablations.tasks: '{task}' is not one of finetune.tasks ({', '.join(study.finetune.tasks)})")
    if not study.finetune.tasks:
        out.append("finetune.tasks is empty: name at least one task (" + ", ".join(TASK_NAMES) + ")")
    if not study.finetune.seeds or len(set(study.finetune.seeds)) != len(study.finetune.seeds):
        out.append(f"finetune.seeds must be distinct and not empty, got {study.finetune.seeds}")
    files = [study.finetune.blank_recipe, study.finetune.pretrained_recipe, *study.distill.config, *study.teacher.config,
             *study.teacher.condition.config]
    for f in files:
        if not Path(f).is_file():
            out.append(f"config file {f} does not exist (paths are relative to the directory you run from, the checkout)")
    if study.vocab.enabled and study.teacher.source == "hub":
        out.append("vocab.enabled needs teacher.source: pretrain (a hub teacher keeps its vocabulary: distil into a trimmed "
                   "student with distill.settings student.vocab instead)")
    out += _check_task_kd(study)
    if study.teacher.source == "pretrain" and not (study.teacher.config or study.teacher.settings):
        out.append("teacher.source: pretrain needs the teacher's architecture and training in teacher.settings or teacher.config")
    return out


def _check_task_kd(study: Study) -> list[str]:
    k, out = study.task_kd, []
    if study.teacher.source == "none":
        distilling = [name for name, on in (("students", study.students), ("ablations", study.ablations.students or
                      study.ablations.data_fractions or study.ablations.embeddings or study.ablations.objectives),
                      ("cache.enabled", study.cache.enabled), ("vocab.enabled", study.vocab.enabled),
                      ("teacher.condition.enabled", study.teacher.condition.enabled)) if on]
        if distilling:
            out.append(f"teacher.source: none distils nothing, but the study sets {', '.join(distilling)}")
        if not k.students and not study.baselines.models:
            out.append("teacher.source: none: the study has no rows; name task_kd.students or baselines.models")
    if k.students and k.teacher is None:
        out.append("task_kd.students need task_kd.teacher: the finetuned model that teaches them")
    for name in k.students:
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            out.append(f"task_kd.students: '{name}': names may hold letters, digits, '-', '_' and '.' only")
    missing = [t for t in study.finetune.tasks if t not in k.transfer_from_train]
    if k.students and missing:
        out.append(f"task_kd.transfer_from_train: no rows held back on {', '.join(missing)}; the students' rows compare the "
                   "student with and without a transfer set: hold back rows on every task")
    for task, n in k.transfer_from_train.items():
        if task not in study.finetune.tasks:
            out.append(f"task_kd.transfer_from_train: '{task}' is not one of finetune.tasks ({', '.join(study.finetune.tasks)})")
        elif n < 1:
            out.append(f"task_kd.transfer_from_train.{task}: {n} rows; hold back at least 1 (or leave the task out)")
    return out


def overrides_of(settings: dict[str, Any], prefix: str = "") -> list[str]:
    """{'train': {'lr': 1e-4}, 'task.max_length': 64} -> ['train.lr=0.0001', 'task.max_length=64'] (values as YAML reads them back)."""
    out = []
    for key, value in settings.items():
        if isinstance(value, dict):
            out += overrides_of(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={_text(value)}")
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, str) and _reads_back_as(value) != value:
        return json.dumps(value)  # a JSON string is YAML's double-quoted scalar: `a #b`, `3`, `null` stay the strings they are
    return str(value)


def _reads_back_as(text: str) -> Any:
    try:
        return parse_value(text)
    except ConfigError:
        return None
