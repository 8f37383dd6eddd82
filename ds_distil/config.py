"""Typed configuration: dataclasses loaded from YAML files plus `section.key=value` overrides.

Unknown keys and values of the wrong type are refused with a message naming the dotted key.
`to_dict` / `save` give back the resolved configuration, which every command writes next to
its outputs.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from ds_distil.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    pass


class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, whose floats need a dot: `5e-5` and `1e-4` would stay strings (and be
    refused for `train.lr`). YAML 1.2, JSON and Python read them as numbers; so do we."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if get_origin(tp) is dict:
        return f"mapping of {_type_name(get_args(tp)[1])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (converted where lossless)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"config key '{key}': expected one of {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin is dict:  # a mapping of names to values (or to sections, for dataclass values)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return {str(k): _convert(v, get_args(tp)[1], f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single value where a list is expected
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        return [_convert(v, get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a section (mapping), got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a path or name that YAML read as a number
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"unsupported config field type {tp!r} for {key}")
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _unknown_key(cls: type, key: str, prefix: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known keys: {', '.join(names)})"
    return ConfigError(f"unknown config key '{prefix}{key}'{hint}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(cls, key, prefix)
        f = fields[key]
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
            # a section given in part keeps this field's own defaults for the rest (they may differ from the class's)
            value = {**to_dict(f.default_factory()), **value}
        kwargs[key] = _convert(value, hints[key], prefix + key)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing config key '{prefix}{missing[0]}' (no default; set it in the YAML or as {prefix}{missing[0]}=...)")
    try:
        return cls(**kwargs)
    except ValueError as e:  # __post_init__ validation
        raise ConfigError(f"config section '{prefix.rstrip('.') or cls.__name__}': {e}") from None


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_value(text: str) -> Any:
    """A command-line value, read as YAML (so `3`, `1e-4`, `true`, `null`, `[a, b]` get their types)."""
    try:
        return yaml_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `section.key=value` override to a nested dict, in place."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not of the form section.key=value")
    dotted, _, raw = override.partition("=")
    parts = dotted.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{override}': '{part}' is a value, not a section")
    node[parts[-1]] = parse_value(raw)


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; pass an existing YAML file (see configs/)")
    try:
        data = yaml_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {p}{line} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections, not {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_dict(paths: list[str | Path] = (), overrides: list[str] = ()) -> dict[str, Any]:
    """Merge YAML files (a file may name `base: other.yaml`, relative to itself) and overrides."""
    data: dict[str, Any] = {}
    for path in paths:
        data = _merge(data, _with_bases(Path(path), seen=()))
    for override in overrides:
        apply_override(data, override)
    return data


def _with_bases(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"config file {path} includes itself through 'base'")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    bases = base if isinstance(base, list) else [base]
    merged: dict[str, Any] = {}
    for b in bases:
        merged = _merge(merged, _with_bases(path.parent / str(b), seen + (path.resolve(),)))
    return _merge(merged, data)


def load(cls: type[T], paths: list[str | Path] = (), overrides: list[str] = ()) -> T:
    return from_dict(cls, load_dict(paths, overrides))


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    return str(value)


def keys_help(cls: type, instance: Any = None, width: int = 42, prefix: str = "") -> str:
    """Every settable key of `cls` as `section.key=DEFAULT  help (type)`, for a command's --help: generated
    from the dataclasses, so the keys, their defaults and their meaning are written once. `instance`
    supplies defaults that differ from the classes' (finetuning's `train` section)."""
    lines: list[str] = []

    def walk(c: type, obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(c)
        for f in dataclasses.fields(c):
            if obj is not None:
                value = getattr(obj, f.name)
            elif f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = dataclasses.MISSING
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], None if value is dataclasses.MISSING else value, f"{prefix}{f.name}.")
                continue
            key = f"{prefix}{f.name}=" + ("..." if value is dataclasses.MISSING else _yaml_scalar(value))
            text = f.metadata.get("help", "") + f" ({_type_name(hints[f.name])}" + (", required)" if value is dataclasses.MISSING else ")")
            lines.append(f"  {key:<{width}}{text}" if len(key) < width - 1 else f"  {key}\n  {'':<{width}}{text}")

    walk(cls, instance, prefix)
    return "\n".join(lines)


def save(obj: Any, path: str | Path) -> None:
    """Write a resolved config as YAML, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(obj), sort_keys=False), encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# Sections. Field metadata "help" is the CLI help text (see cli.py); defaults are the paper's
# or, where the paper is silent, what fits a small-compute user.
# --------------------------------------------------------------------------------------------


def _help(text: str, **kw: Any) -> Any:
    return dataclasses.field(metadata={"help": text}, **kw)


@dataclasses.dataclass
class PrepareConfig:
    """`ds-distil prepare`: raw text -> tokenized, packed WebDataset shards + manifest.json."""

    out: str = _help("output directory for shards, manifest.json and tokenizer/")
    input: list[str] = _help(
        "local text files: .txt (one document per line), .jsonl (one JSON object per line), .gz of either",
        default_factory=list,
    )
    hf_dataset: str | None = _help("Hugging Face dataset to stream instead, e.g. oscar-corpus/OSCAR-2301", default=None)
    hf_config: str | None = _help("its configuration, e.g. tl", default=None)
    hf_split: str = _help("its split", default="train")
    text_field: str = _help("field holding the text (.jsonl input and HF datasets)", default="text")
    tokenizer: str = _help("tokenizer: a hub name or a local directory", default="bert-base-multilingual-cased")
    seq_len: int = _help("tokens per sample, [CLS] included", default=128)
    samples_per_shard: int = _help("samples per .tar shard", default=4096)
    val_fraction: float = _help("fraction of documents held out for validation (chosen before --fraction)", default=0.01)
    fraction: float = _help("fraction of the training documents kept (the paper's 100/80/50%% ablation)", default=1.0)
    seed: int = _help("seed for the validation split, --fraction and document shuffling", default=0)
    doc_shuffle_buffer: int = _help("documents shuffled in a buffer of this size before packing (0: keep order)", default=10000)
    workers: int = _help("tokenizer processes (0: one per CPU core)", default=0)
    max_docs: int | None = _help("stop after this many documents (after selection); for trials", default=None)
    skip_bad_lines: bool = _help("skip lines that are not valid UTF-8 / JSON instead of stopping", default=False)
    max_line_bytes: int = _help("longest line read whole; a longer text line is cut into documents of at most this size, "
                                "a longer JSON line skipped (both counted); bounds prepare's memory", default=1 << 20)
    overwrite: bool = _help("replace an existing prepared directory", default=False)

    def __post_init__(self) -> None:
        if self.seq_len < 8:
            raise ValueError(f"seq_len must be >= 8, got {self.seq_len}")
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.workers < 0 or self.doc_shuffle_buffer < 0:
            raise ValueError("workers and doc_shuffle_buffer must be >= 0")
        if self.max_line_bytes < 1024:
            raise ValueError(f"max_line_bytes must be >= 1024, got {self.max_line_bytes}")


@dataclasses.dataclass
class DataConfig:
    """How prepared shards are streamed to the ranks (section `data`)."""

    shards: str = _help("directory written by `ds-distil prepare`")
    num_workers: int = _help("DataLoader worker processes per rank", default=2)
    shuffle: bool = _help("shuffle shard order and samples (per-epoch seed)", default=True)
    shuffle_buffer: int = _help("samples in each worker's shuffle buffer", default=10000)
    mlm_probability: float = _help("fraction of maskable tokens chosen for MLM", default=0.15)
    mask_token_prob: float = _help("of those: replaced by [MASK]", default=0.8)
    random_token_prob: float = _help("of those: replaced by a random token (the rest are kept)", default=0.1)
    seed: int = _help("seed of shuffling and masking", default=0)
    verify_checksums: bool = _help("check shard sha256 against the manifest at start (each rank a share)", default=True)
    skip_corrupt_shards: bool = _help("skip unreadable shards (counted and logged) instead of stopping", default=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.mask_token_prob < 0 or self.random_token_prob < 0 or self.mask_token_prob + self.random_token_prob > 1.0:
            raise ValueError("mask_token_prob and random_token_prob must be >= 0 and sum to <= 1")
        if self.num_workers < 0 or self.shuffle_buffer < 1:
            raise ValueError("num_workers must be >= 0 and shuffle_buffer >= 1")


PRESETS = ("mbert", "distilmbert", "dbert-base", "dbert-tiny", "tiny", "micro")


@dataclasses.dataclass
class TeacherConfig:
    """The frozen teacher (section `teacher`). Set exactly one of pretrained / config / preset, or
    enabled=false for MLM-only training (teacher conditioning, from-scratch baselines)."""

    enabled: bool = _help("false: no teacher, MLM loss only", default=True)
    pretrained: str | None = _help("weights: a hub name (bert-base-multilingual-cased) or a local HF directory", default=None)
    config: str | None = _help("architecture config.json for a randomly initialised teacher", default=None)
    preset: str | None = _help(f"architecture preset for a randomly initialised teacher: {', '.join(PRESETS)}", default=None)
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = _help("teacher precision; auto: bf16 on GPUs that have it, else fp16; fp32 on CPU",
                                                           default="auto")

    def __post_init__(self) -> None:
        given = [k for k in ("pretrained", "config", "preset") if getattr(self, k)]
        if self.enabled and len(given) != 1:
            raise ValueError("set exactly one of pretrained, config or preset (or enabled: false for MLM only); "
                             f"got {', '.join(given) or 'none'}")
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"unknown preset '{self.preset}' (known: {', '.join(PRESETS)})")


@dataclasses.dataclass
class StudentConfig:
    """The model trained (section `student`): a preset, sizes overriding it, or pretrained weights."""

    preset: str | None = _help(f"architecture preset: {', '.join(PRESETS)}", default="dbert-tiny")
    num_layers: int | None = _help("override the preset's layer count", default=None)
    hidden_size: int | None = _help("override the preset's hidden size", default=None)
    intermediate_size: int | None = _help("override the preset's FFN size", default=None)
    num_heads: int | None = _help("override the preset's attention heads", default=None)
    max_positions: int | None = _help("override the preset's position count", default=None)
    pretrained: str | None = _help("start from these weights instead (hub name or HF directory), e.g. to MLM-condition a teacher", default=None)
    embeddings: Literal["random", "teacher", "teacher-pca"] = _help(
        "word/position/type embeddings: random; copied from the teacher (same hidden size only); "
        "or the teacher's projected onto the student's size by PCA", default="random")
    freeze_embeddings: bool = _help("keep the embeddings fixed during training", default=False)
    dropout: float = _help("hidden and attention dropout", default=0.1)
    norm: Literal["post", "pre"] = _help(
        "where a blank model's LayerNorms sit: post (BERT, BertForMaskedLM) or pre (pre-LN, MegatronBertForMaskedLM: "
        "stable at the higher learning rates of pretraining from random weights; Xiong et al. 2020)", default="post")
    vocab: str | None = _help("a target-language vocabulary (`ds-distil vocab --out DIR`): the student gets only its tokens, "
                              "the teacher's LM head and the KL run over them", default=None)

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset '{self.preset}' (known: {', '.join(PRESETS)})")
        sizes = (self.num_layers, self.hidden_size, self.intermediate_size, self.num_heads, self.max_positions)
        if self.preset is None and self.pretrained is None and None in sizes:
            raise ValueError("set a preset, pretrained weights, or all of num_layers, hidden_size, intermediate_size, "
                             "num_heads and max_positions")
        if self.pretrained is not None and self.norm != "post":
            raise ValueError("student.norm chooses a blank model's architecture; pretrained weights bring their own "
                             "(drop student.norm or student.pretrained)")


@dataclasses.dataclass
class LossConfig:
    """`a_kl * T^2 * KL(teacher || student) + a_mlm * CE + a_hidden * hidden`, per masked token (section `loss`)."""

    a_kl: float = _help("weight of the distillation KL term", default=0.5)
    a_mlm: float = _help("weight of the MLM cross-entropy term", default=0.5)
    temperature: float = _help("softmax temperature T, applied to teacher and student", default=2.0)
    a_hidden: float = _help("weight of the last-hidden-state term (needs equal hidden sizes)", default=0.0)
    hidden_kind: Literal["cosine", "mse"] = _help("hidden-state term: 1 - cosine, or mean squared error", default="cosine")

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if min(self.a_kl, self.a_mlm, self.a_hidden) < 0 or self.a_kl + self.a_mlm + self.a_hidden == 0:
            raise ValueError("loss weights must be >= 0 and not all 0")


@dataclasses.dataclass
class TrainConfig:
    """Batch sizes, schedule, optimizer: the one source the DeepSpeed config is filled from (section `train`)."""

    micro_batch_size: int = _help("samples per rank per forward pass", default=32)
    grad_accum_steps: int = _help("micro batches per optimizer step; global batch = micro x accum x ranks", default=1)
    epochs: float = _help("passes over the training data (the paper: 3)", default=3.0)
    max_steps: int | None = _help("stop after this many optimizer steps instead of epochs", default=None)
    lr: float = _help("peak learning rate", default=5e-4)
    warmup_ratio: float = _help("share of steps warming up linearly", default=0.05)
    schedule: Literal["linear", "cosine"] = _help("decay after warm-up", default="linear")
    weight_decay: float = _help("AdamW weight decay (not on biases and LayerNorm)", default=0.01)
    adam_betas: list[float] = _help("AdamW betas", default_factory=lambda: [0.9, 0.98])
    adam_eps: float = _help("AdamW epsilon", default=1e-6)
    grad_clip: float = _help("gradient norm clipping (0: off)", default=1.0)
    seed: int = _help("seed of model init and dropout", default=42)
    max_nonfinite_steps: int = _help("stop when the loss is NaN/inf this many steps in a row", default=10)

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1 or self.grad_accum_steps < 1:
            raise ValueError("micro_batch_size and grad_accum_steps must be >= 1")
        if self.max_steps is None and self.epochs <= 0:
            raise ValueError("set epochs > 0 or max_steps")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or null to train for `epochs`), got {self.max_steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.adam_eps <= 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0 and adam_eps > 0")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")


@dataclasses.dataclass
class CheckpointConfig:
    """Section `checkpoint`."""

    every_steps: int = _help("save every N optimizer steps (and at the end; 0: only at the end)", default=1000)
    keep: int = _help("complete checkpoints kept (older ones are deleted; >= 1: the newest is never deleted)", default=2)
    export: bool = _help("export the student as a Hugging Face directory at the end", default=True)

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1 (the final checkpoint is what export and --resume read), got {self.keep}")
        if self.every_steps < 0:
            raise ValueError(f"every_steps must be >= 0 (0: only at the end), got {self.every_steps}")


@dataclasses.dataclass
class LogConfig:
    """Section `log`."""

    every_steps: int = _help("log scalars every N optimizer steps", default=10)
    tensorboard: bool = _help("write TensorBoard events under DIR/tensorboard", default=True)
    peak_tflops: float | None = _help("device peak TFLOP/s for MFU (default: known GPUs; none on CPU)", default=None)
    eval_every_steps: int = _help("validate on the shards' held-out split every N optimizer steps and at the end "
                                  "(0: only at the end)", default=500)
    eval_max_samples: int = _help("validate on the first N samples of the validation split, the same in every run "
                                  "(0: all of them)", default=2048)

    def __post_init__(self) -> None:
        if self.every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {self.every_steps}")
        if self.eval_every_steps < 0 or self.eval_max_samples < 0:
            raise ValueError(f"eval_every_steps and eval_max_samples must be >= 0, got {self.eval_every_steps} and {self.eval_max_samples}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"peak_tflops must be > 0, got {self.peak_tflops}")


@dataclasses.dataclass
class DeepSpeedConfig:
    """Section `deepspeed`: the JSON holding ZeRO and precision settings. Batch sizes, optimizer,
    scheduler and clipping come from `train` and must not be in it."""

    config: str = _help("DeepSpeed JSON (see ds_configs/), or auto: zero2-bf16 on a GPU with bf16 (Ampere and newer), "
                        "zero2-fp16 on older GPUs, zero2-fp32 on CPU", default="auto")


@dataclasses.dataclass
class PerfConfig:
    """Section `perf`: speed levers. None of them changes what is computed beyond floating-point
    rounding; each was measured (benchmarks/results/README.md)."""

    pad_vocab_multiple: int = _help("pad the vocabulary rows of teacher and student to a multiple of this (aligned LM-head "
                                    "GEMMs; padding logits are cut off before the softmax, and the export drops the rows); "
                                    "1: off", default=128)
    compile: bool | Literal["auto"] = _help("torch.compile the teacher, the student and the loss (true/false); auto: on for CUDA",
                                            default="auto")
    fused_adamw: bool | Literal["auto"] = _help("torch's fused AdamW kernel (one kernel for the whole update) instead of "
                                                     "the per-tensor one (true/false); auto: on where torch has it for the device", default="auto")

    def __post_init__(self) -> None:
        if self.pad_vocab_multiple < 1:
            raise ValueError(f"pad_vocab_multiple must be >= 1 (1: no padding), got {self.pad_vocab_multiple}")


@dataclasses.dataclass
class DistillConfig:
    """`ds-distil distill --config FILE --out DIR [section.key=value ...]`."""

    data: DataConfig
    teacher: TeacherConfig
    student: StudentConfig = dataclasses.field(default_factory=StudentConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    deepspeed: DeepSpeedConfig = dataclasses.field(default_factory=DeepSpeedConfig)
    perf: PerfConfig = dataclasses.field(default_factory=PerfConfig)
