"""`ds-distil finetune`: its configuration."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

from ds_distil.core.config import setting
from ds_distil.schema.distill import DeepSpeedConfig, TrainConfig

TASK_NAMES = ("hatespeech", "ner", "pos", "nli", "csv")  # data/tasks.py reads them
FT_PRESETS = ("mbert", "distilmbert", "dbert-base", "dbert-tiny", "tagalog-roberta", "tiny", "micro")
REPEAT_WARN_SHARE = 0.2  # more training (or validation) rows than this repeating an earlier one: a warning (data/duplicates.py)
AUTO_PERCENTILE, AUTO_MIN, AUTO_CAP = 99.0, 16, 256  # task.max_length=auto: the training examples it covers, its bounds (finetune/lengths.py)
RECIPES = Path(__file__).resolve().parents[2] / "configs" / "finetune"  # blank.yaml, pretrained.yaml: the recipes' one source


def random_weights(model: str) -> bool:
    """Whether `--model` starts from random weights: an architecture preset or a config.json file."""
    return model in FT_PRESETS or (model.endswith(".json") and Path(model).is_file())


@dataclasses.dataclass
class TaskConfig:
    """Section `task`: where the data comes from and how it is read."""

    data_dir: str | None = setting("local data directory (default: the task's folder in $DS_DISTIL_DATA or ../shared/data)", default=None)
    hub: bool = setting("load the task's Hugging Face dataset instead of local files", default=False)
    dataset_name: str | None = setting("name of the data in results.json and the report (default: the data directory's name)", default=None,
                                       resume=True)
    text_column: str = setting("csv task: text column (field, for JSON)", default="text")
    text_pair_column: str | None = setting("csv task: second text column, for sentence pairs", default=None)
    label_column: str = setting("csv task: label column", default="label")
    id_column: str | None = setting("csv task: a column naming each row; the `id` of its line in predictions/*.jsonl (default: "
                                    "FILE:LINE, the row's file and line)", default=None)
    encoding: str = setting("file encoding; auto: a BOM, else UTF-8 (e.g. cp1252, latin-1)", default="auto")
    skip_bad_rows: bool = setting("skip rows with an empty label or text, wrong field count or unknown label (counted) instead of stopping", default=False)
    valid_fraction: float | None = setting("no validation file: hold this share of train out (stratified by label, seeded by task.seed; every copy of a text on one side)", default=None)
    dedup: Literal["keep", "drop"] = setting(
        "exact duplicates (case and spacing ignored): keep: count them and warn when validation or test rows also occur in training, "
        f"or when more than {REPEAT_WARN_SHARE:.0%} of the training or validation rows are repeats; drop: also keep one copy of each "
        "text in training and in validation, and drop training rows whose text is in validation or test (test stays as it "
        "is, so that its scores compare with other runs on the same files)", default="keep")
    test_fraction: float | None = setting("no test file: hold this share of train out as the test split (stratified by label, "
                                          "seeded by task.seed, every copy of a text and every task.group_column group on one side)",
                                          default=None)
    group_column: str | None = setting("csv task: a column naming each row's group (e.g. the document a premise comes from, the "
                                       "author); the splits made by task.valid_fraction / task.test_fraction never split a group, "
                                       "and groups shared by the given files are counted and warned", default=None)
    seed: int = setting("seed of the held-out splits and of the training sample (not of training: that is train.seed)", default=0)
    max_length: int | Literal["auto"] = setting(
        "tokens per example after tokenization (longer ones are truncated: how many, per split, is in the console and results.json); "
        f"auto: the length covering {AUTO_PERCENTILE:g}% of the training examples (special tokens included), rounded up to a "
        f"multiple of 8, at least {AUTO_MIN} and at most {AUTO_CAP} or the model's position embeddings", default=128)
    max_train_examples: int | None = setting("train on a sample of N examples (stratified by label, seeded by task.seed)", default=None)
    tokenizer: str | None = setting("tokenizer for architecture presets (default: the mBERT tokenizer in the data directory)", default=None)
    transfer_file: str | None = setting(
        "task distillation: a transfer set, rows in the task's format (a file like its training file, read the same way) that the "
        "teacher labels and the student learns from by KD alone; gold labels in it are not trained on, they measure the "
        "teacher's agreement (needs teacher or teacher_predictions)", default=None)
    transfer_from_train: int | None = setting(
        "hold the labels back from N training rows (seeded by task.seed, stratified by label; after task.max_train_examples): "
        "with a teacher, they are a transfer set it labels; without one, they are left out (the student alone on the rest, "
        "the row a study compares with)", default=None)

    def __post_init__(self) -> None:
        if self.valid_fraction is not None and not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if self.test_fraction is not None and not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.valid_fraction is not None and self.test_fraction is not None and self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"valid_fraction + test_fraction must leave rows for training, got {self.valid_fraction} + {self.test_fraction}")
        if self.max_length != "auto" and self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
        if self.max_train_examples is not None and self.max_train_examples < 2:
            raise ValueError(f"max_train_examples must be >= 2 (or null for all), got {self.max_train_examples}")
        if self.transfer_from_train is not None and self.transfer_from_train < 1:
            raise ValueError(f"transfer_from_train must be >= 1 (or null: none), got {self.transfer_from_train}")
        if self.transfer_from_train is not None and self.transfer_file:
            raise ValueError("transfer_file and transfer_from_train are two transfer sets: set one of them")



@dataclasses.dataclass
class FinetuneTrainConfig(TrainConfig):
    """Section `train` of finetuning: distillation's, and which model the run keeps."""

    keep: Literal["last", "best"] = setting(
        "the model written to DIR/model and scored in results.json: last: the end of training; best: the one of the highest "
        "validation score among the evaluations (eval_every_steps, and the end)", default="last", resume=True)


def _ft_train_defaults() -> FinetuneTrainConfig:
    return FinetuneTrainConfig(micro_batch_size=32, epochs=3.0, lr=5e-5, warmup_ratio=0.1, adam_betas=[0.9, 0.999], adam_eps=1e-8)


@dataclasses.dataclass
class TaskKDConfig:
    """Section `kd`: task distillation from `teacher` or `teacher_predictions` (finetune/teacher.py): per labelled example
    (per word for token tasks) `alpha * CE(gold) + (1 - alpha) * T^2 * KL(teacher_T || student_T)`, on transfer rows the KL
    term alone. The defaults are DistilBERT's (alpha_ce 0.5 beside 0.5 for the task loss, T 2)."""

    alpha: float = setting("weight of the cross-entropy with the gold labels; 1 - alpha weighs the KL to the teacher (0: the "
                           "teacher alone, 1: the gold labels alone)", default=0.5)
    temperature: float = setting("softmax temperature T of teacher and student in the KL, which is scaled by T^2 so that its "
                                 "gradients keep their size (DistilBERT: 2, TextBrewer: up to 8)", default=2.0)
    teacher_dtype: Literal["auto", "fp32", "bf16", "fp16"] = setting(
        "precision of the live teacher's pass; auto: bf16 where the device has it natively, else fp16 on a GPU, fp32 on a CPU. "
        "`ds-distil predict` runs in fp32: with teacher_dtype=fp32 a live teacher and its predictions file teach the same "
        "student", default="auto")
    transfer: bool = setting("learn from the transfer set; false: task.transfer_from_train's rows are left out as without a teacher "
                             "(the teacher on the labelled rows alone: the KD row of a study beside KD + transfer set)", default=True)
    batch_size: int = setting("examples per rank per batch of the live teacher's pass (batched by length as `ds-distil predict` "
                              "batches: with its batch_size, the same logits)", default=64)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (the share of the gold labels' cross-entropy), got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


EVALUATIONS_PER_RUN = 5  # eval_every_steps=auto: validation this many times per run (the last one at the end)


@dataclasses.dataclass
class FinetuneCheckpointConfig:
    """Section `checkpoint`: what a stopped finetuning run continues from (--resume). Deleted when the run finishes:
    its output is DIR/model."""

    every_steps: int | Literal["auto"] = setting(
        f"save every N optimizer steps; auto: {EVALUATIONS_PER_RUN} times per run (with eval_every_steps=auto, right after "
        "each evaluation); 0: only when stopped by a signal (SIGTERM, SLURM's SIGUSR1)", default="auto", resume=True)
    keep: int = setting("complete checkpoints kept while the run trains (older ones are deleted)", default=1, resume=True)

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1 (the newest checkpoint is what --resume reads), got {self.keep}")
        if self.every_steps != "auto" and self.every_steps < 0:
            raise ValueError(f"every_steps must be >= 0 (0: only when stopped), or auto, got {self.every_steps}")


@dataclasses.dataclass
class FinetuneConfig:
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    train: FinetuneTrainConfig = dataclasses.field(default_factory=_ft_train_defaults)
    checkpoint: FinetuneCheckpointConfig = dataclasses.field(default_factory=FinetuneCheckpointConfig)
    recipe: Literal["auto", "blank", "pretrained", "none"] = setting(
        "the settings beneath yours: auto: configs/finetune/blank.yaml for random weights (presets, a config.json), "
        "configs/finetune/pretrained.yaml for pretrained encoders (directories, hub names); blank | pretrained: that file; "
        "none: only the defaults shown here. Your --config files and key=value settings always win, key by key", default="auto")
    model_name: str | None = setting("name of the model in results.json and the report (default: from its card or config)", default=None,
                                     resume=True)
    teacher: str | None = setting(
        "task distillation: a finetuned classifier (a finetune run's DIR/model, or a Hugging Face directory with a sequence- or "
        "token-classification head over the task's labels, in the task's order) that teaches the student (section kd); it runs "
        "once over the training and transfer rows, frozen, before the first step", default=None)
    teacher_predictions: str | None = setting(
        "task distillation from a file instead of a live teacher: JSON lines, one per row (what `ds-distil predict` writes): the "
        "row's text (words for token tasks) and its class probabilities or logits (per word for token tasks), for every "
        "training and transfer row", default=None)
    kd: TaskKDConfig = dataclasses.field(default_factory=TaskKDConfig)
    eval_batch_size: int = setting("examples per rank per evaluation batch", default=64, resume=True)
    log_every_steps: int = setting("log training loss every N steps", default=20, resume=True)
    eval_every_steps: int | Literal["auto"] | None = setting(
        "also score the validation split every N steps (console, TensorBoard valid/*, metrics.jsonl): a validation curve; "
        f"auto: {EVALUATIONS_PER_RUN} times per run, the last at the end; null: once, at the end", default="auto", resume=True)
    deepspeed: DeepSpeedConfig = dataclasses.field(default_factory=lambda: DeepSpeedConfig(config="auto"))

    def __post_init__(self) -> None:
        if self.eval_batch_size < 1 or self.log_every_steps < 1 or (isinstance(self.eval_every_steps, int) and self.eval_every_steps < 1):
            raise ValueError("eval_batch_size, log_every_steps and eval_every_steps must be >= 1")
        if self.teacher and self.teacher_predictions:
            raise ValueError("teacher and teacher_predictions are two sources of the same targets: set one of them")
        if self.task.transfer_file and not self.kd.transfer:
            raise ValueError("task.transfer_file with kd.transfer=false: the file would not be read; drop one of them")
        if self.task.transfer_file and not (self.teacher or self.teacher_predictions):
            raise ValueError("task.transfer_file is a transfer set for a teacher to label: set teacher=DIR or teacher_predictions=FILE")

    def eval_every(self, num_steps: int) -> int:
        """eval_every_steps for a run of `num_steps` optimizer steps (0: only at the end)."""
        return _per_run(num_steps) if self.eval_every_steps == "auto" else self.eval_every_steps or 0

    def checkpoint_every(self, num_steps: int) -> int:
        """checkpoint.every_steps for a run of `num_steps` optimizer steps (0: only when stopped)."""
        return _per_run(num_steps) if self.checkpoint.every_steps == "auto" else self.checkpoint.every_steps


def _per_run(num_steps: int) -> int:
    """The interval of `auto`: EVALUATIONS_PER_RUN times per run, the last at the end."""
    return max(1, math.ceil(num_steps / EVALUATIONS_PER_RUN))


@dataclasses.dataclass
class PredictConfig:
    """`ds-distil predict`: how the input file is read (default: as the model's training files were, from its
    ds_distil_task.json) and batched."""

    text_column: str | None = setting("text column (field, for JSON; for token models the field with the list of words)", default=None)
    text_pair_column: str | None = setting("second text column, for a model of sentence pairs", default=None)
    label_column: str | None = setting("gold label column: where the file has it, the gold labels are checked against the "
                                       "model's, written beside the predictions and scored; without it, predictions only", default=None)
    id_column: str | None = setting("a column naming each row: the `id` of its output line (default: FILE:LINE)", default=None)
    encoding: str = setting("file encoding; auto: a BOM, else UTF-8 (e.g. cp1252, latin-1)", default="auto")
    skip_bad_rows: bool = setting("skip rows with an empty text or label, wrong field count or a label the model does not "
                                  "know (counted) instead of stopping", default=False)
    max_length: int | None = setting("tokens per example (longer ones are truncated, and marked in the output); default: the "
                                     "length the model was finetuned with", default=None)
    batch_size: int = setting("examples per rank per batch (batches are formed of examples of similar length)", default=64)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
