"""`ds-distil finetune`: its configuration."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from ds_distil.core.config import setting
from ds_distil.schema.distill import DeepSpeedConfig, TrainConfig

TASK_NAMES = ("hatespeech", "ner", "pos", "nli", "csv")  # data/tasks.py reads them
FT_PRESETS = ("mbert", "distilmbert", "dbert-base", "dbert-tiny", "tagalog-roberta", "tiny", "micro")
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
    dataset_name: str | None = setting("name of the data in results.json and the report (default: the data directory's name)", default=None)
    text_column: str = setting("csv task: text column (field, for JSON)", default="text")
    text_pair_column: str | None = setting("csv task: second text column, for sentence pairs", default=None)
    label_column: str = setting("csv task: label column", default="label")
    encoding: str = setting("file encoding; auto: a BOM, else UTF-8 (e.g. cp1252, latin-1)", default="auto")
    skip_bad_rows: bool = setting("skip rows with an empty label or text, wrong field count or unknown label (counted) instead of stopping", default=False)
    valid_fraction: float | None = setting("no validation file: hold this share of train out (stratified by label, seeded by task.seed; every copy of a text on one side)", default=None)
    dedup: Literal["keep", "drop"] = setting(
        "exact duplicates (case and spacing ignored): keep: count them and warn when validation or test rows also occur in training; "
        "drop: also keep one copy of each text in training and drop training rows whose text is in validation or test "
        "(validation and test stay as they are)", default="keep")
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



def _ft_train_defaults() -> TrainConfig:
    return TrainConfig(micro_batch_size=32, epochs=3.0, lr=5e-5, warmup_ratio=0.1, adam_betas=[0.9, 0.999], adam_eps=1e-8)


@dataclasses.dataclass
class FinetuneConfig:
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    train: TrainConfig = dataclasses.field(default_factory=_ft_train_defaults)
    recipe: Literal["auto", "blank", "pretrained", "none"] = setting(
        "the settings beneath yours: auto: configs/finetune/blank.yaml for random weights (presets, a config.json), "
        "configs/finetune/pretrained.yaml for pretrained encoders (directories, hub names); blank | pretrained: that file; "
        "none: only the defaults shown here. Your --config files and key=value settings always win, key by key", default="auto")
    model_name: str | None = setting("name of the model in results.json and the report (default: from its card or config)", default=None)
    eval_batch_size: int = setting("examples per rank per evaluation batch", default=64)
    log_every_steps: int = setting("log training loss every N steps", default=20)
    eval_every_steps: int | None = setting("also score the validation split every N steps (console, TensorBoard valid/*, metrics.jsonl): "
                                           "a validation curve; null: once, at the end", default=None)
    deepspeed: DeepSpeedConfig = dataclasses.field(default_factory=lambda: DeepSpeedConfig(config="auto"))

    def __post_init__(self) -> None:
        if self.eval_batch_size < 1 or self.log_every_steps < 1 or (self.eval_every_steps is not None and self.eval_every_steps < 1):
            raise ValueError("eval_batch_size, log_every_steps and eval_every_steps must be >= 1")
