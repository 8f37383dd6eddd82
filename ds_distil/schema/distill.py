"""`ds-distil distill`: its configuration, section by section. Field metadata "help" is the CLI help text; defaults are
the paper's or, where the paper is silent, what fits a small-compute user."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ds_distil.core.config import setting

MASKINGS = ("dynamic", "static")  # ds_distil/data/stream.py: _EpochDataset._batch


@dataclasses.dataclass
class DataConfig:
    """How prepared shards are streamed to the ranks (section `data`)."""

    shards: str = setting("directory written by `ds-distil prepare`", resume=True)
    num_workers: int = setting("DataLoader worker processes per rank (may change on --resume: the epoch in progress keeps "
                               "its order; the next one is laid out for the new count)", default=2, resume=True)
    shuffle: bool = setting("shuffle shard order and samples (per-epoch seed)", default=True)
    shuffle_buffer: int = setting("samples in each worker's shuffle buffer", default=10000)
    mlm_probability: float = setting("fraction of maskable tokens chosen for MLM", default=0.15)
    mask_token_prob: float = setting("of those: replaced by [MASK]", default=0.8)
    random_token_prob: float = setting("of those: replaced by a random token (the rest are kept)", default=0.1)
    seed: int = setting("seed of shuffling and masking", default=0)
    masking: Literal[MASKINGS] = setting("dynamic: new masks every epoch, drawn per batch; static: each sample's masks a "
                                         "function of (data.seed, its index, copy = epoch % mask_copies) alone, whatever "
                                         "the ranks, batch size or resume (what a teacher cache needs)", default="dynamic")
    mask_copies: int = setting("static masking: how many different maskings of each sample, used in turn by the "
                               "epochs (BERT's recipe: 10)", default=1)
    verify_checksums: bool = setting("check shard sha256 against the manifest at start (each rank a share)", default=True, resume=True)
    skip_corrupt_shards: bool = setting("skip unreadable shards (counted and logged) instead of stopping", default=False, resume=True)

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.mask_token_prob < 0 or self.random_token_prob < 0 or self.mask_token_prob + self.random_token_prob > 1.0:
            raise ValueError("mask_token_prob and random_token_prob must be >= 0 and sum to <= 1")
        if self.num_workers < 0 or self.shuffle_buffer < 1:
            raise ValueError("num_workers must be >= 0 and shuffle_buffer >= 1")
        if self.mask_copies < 1:
            raise ValueError(f"mask_copies must be >= 1, got {self.mask_copies}")


PRESETS = ("mbert", "distilmbert", "dbert-base", "dbert-tiny", "tiny", "micro")


@dataclasses.dataclass
class TeacherConfig:
    """The frozen teacher (section `teacher`). Set exactly one of pretrained / config / preset, or
    enabled=false for MLM-only training (teacher conditioning, from-scratch baselines)."""

    enabled: bool = setting("false: no teacher, MLM loss only", default=True)
    pretrained: str | None = setting("weights: a hub name (bert-base-multilingual-cased) or a local HF directory", default=None)
    config: str | None = setting("architecture config.json for a randomly initialised teacher", default=None)
    preset: str | None = setting(f"architecture preset for a randomly initialised teacher: {', '.join(PRESETS)}", default=None)
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = setting(
        "teacher precision; auto: bf16 where the device has it natively (Ampere+ GPUs, CPUs with AVX-512 BF16 or AMX), else fp16 on "
        "a GPU, fp32 on a CPU", default="auto")
    cache: str | None = setting("a teacher cache (`ds-distil teacher-cache`): distil from its sampled targets instead of running "
                                "the teacher (needs data.masking=static); with pretrained/config/preset too, the cache must be "
                                "that teacher's (its weights' hash is checked)", default=None, resume=True)
    cache_validation: Literal["cache", "live"] = setting(
        "with a cache, validate against its held-out copy (cache: the KL its sampled estimate, no top-1 agreement; no "
        "teacher in memory) or against the live teacher named beside it (live: the exact KL and agreement, as a live run "
        "validates; the teacher stays in memory for validation only)", default="cache")

    def __post_init__(self) -> None:
        given = [k for k in ("pretrained", "config", "preset") if getattr(self, k)]
        if self.cache and self.cache_validation == "live" and not given:
            raise ValueError("teacher.cache_validation=live validates against the live teacher: name it beside the cache "
                             "(teacher.pretrained, config or preset)")
        if self.enabled and (len(given) > 1 or (not given and not self.cache)):
            raise ValueError("set exactly one of pretrained, config or preset (or enabled: false for MLM only, or a cache); "
                             f"got {', '.join(given) or 'none'}")
        if self.cache and not self.enabled:
            raise ValueError("teacher.cache needs teacher.enabled: true")
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"unknown preset '{self.preset}' (known: {', '.join(PRESETS)})")


@dataclasses.dataclass
class StudentConfig:
    """The model trained (section `student`): a preset, sizes overriding it, or pretrained weights."""

    preset: str | None = setting(f"architecture preset: {', '.join(PRESETS)}", default="dbert-tiny")
    num_layers: int | None = setting("override the preset's layer count", default=None)
    hidden_size: int | None = setting("override the preset's hidden size", default=None)
    intermediate_size: int | None = setting("override the preset's FFN size", default=None)
    num_heads: int | None = setting("override the preset's attention heads", default=None)
    max_positions: int | None = setting("override the preset's position count", default=None)
    pretrained: str | None = setting("start from these weights instead (hub name or HF directory), e.g. to MLM-condition a teacher", default=None)
    embeddings: Literal["random", "teacher", "teacher-pca"] = setting(
          "word/position/type embeddings: random; copied from the teacher (same hidden size only); "
          "or the teacher's projected onto the student's size by PCA", default="random")
    freeze_embeddings: bool = setting("keep the embeddings fixed during training", default=False)
    dropout: float = setting("hidden and attention dropout", default=0.1)
    norm: Literal["post", "pre"] = setting(
          "where a blank model's LayerNorms sit: post (BERT, BertForMaskedLM) or pre (pre-LN, MegatronBertForMaskedLM: "
          "stable at the higher learning rates of pretraining from random weights; Xiong et al. 2020)", default="post")
    vocab: str | None = setting("a target-language vocabulary (`ds-distil vocab --out DIR`): the student gets only its tokens, "
                                "the teacher's LM head and the KL run over them", default=None)

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset '{self.preset}' (known: {', '.join(PRESETS)})")
        sizes = (self.num_layers, self.hidden_size, self.intermediate_size, self.num_heads, self.max_positions)
        if self.preset is None and self.pretrained is None and None in sizes:
            raise ValueError("set a preset, pretrained weights, or all of num_layers, hidden_size, intermediate_size, "
                             "num_heads and max_positions")
        for name, size in zip(("num_layers", "hidden_size", "intermediate_size", "num_heads", "max_positions"), sizes):
            if size is not None and size < 1:
                raise ValueError(f"{name} must be >= 1, got {size}")
        if self.hidden_size is not None and self.num_heads is not None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pretrained is not None and self.norm != "post":
            raise ValueError("student.norm chooses a blank model's architecture; pretrained weights bring their own "
                             "(drop student.norm or student.pretrained)")


OBJECTIVES = ("auto", "kd", "mlm", "tinybert", "minilmv2")  # ds_distil/distill/objectives/ implements each (auto: kd or mlm)
# the weights each objective trains with (one of them must be > 0)
OBJECTIVE_WEIGHTS = {"auto": ("a_kl", "a_mlm", "a_hidden"), "kd": ("a_kl", "a_mlm", "a_hidden"), "mlm": (),
                     "tinybert": ("a_kl", "a_mlm", "a_attention", "a_layers"), "minilmv2": ("a_kl", "a_mlm", "a_relations")}


@dataclasses.dataclass
class LossConfig:
    """What the student learns from (section `loss`): the objective and its weights. `kd`, the paper's:
    `a_kl * T^2 * KL(teacher || student) + a_mlm * CE` per masked token, `+ a_hidden * hidden` per real token.
    `tinybert` and `minilmv2` add intermediate-layer terms to the same KL and MLM terms (weight 0 drops a term from
    the loss; validation still reports the KL and MLM)."""

    objective: Literal[OBJECTIVES] = setting("kd: distillation from the teacher (KL + MLM, + last hidden states); mlm: masked "
                                             "language modelling alone, no teacher; tinybert: + attention scores and hidden "
                                             "states of mapped layers (Jiao et al. 2020); minilmv2: + the Q-Q, K-K, V-V "
                                             "self-attention relations of one teacher layer and the student's last (Wang et al. "
                                             "2021); auto: kd with a teacher, mlm with teacher.enabled=false", default="auto")
    a_kl: float = setting("weight of the distillation KL term", default=0.5)
    a_mlm: float = setting("weight of the MLM cross-entropy term", default=0.5)
    temperature: float = setting("softmax temperature T, applied to teacher and student", default=2.0)
    a_hidden: float = setting("kd: weight of the last-hidden-state term (needs equal hidden sizes)", default=0.0)
    hidden_kind: Literal["cosine", "mse"] = setting("kd: hidden-state term: 1 - cosine, or mean squared error", default="cosine")
    a_attention: float = setting("tinybert: weight of the attention-score MSE over the mapped layers (needs equal head counts; "
                                 "0: off)", default=1.0)
    a_layers: float = setting("tinybert: weight of the hidden-state MSE over the embeddings and the mapped layers, through a "
                              "learned projection where the student is narrower", default=1.0)
    layer_map: list[int] | None = setting("tinybert: the teacher layer (1..teacher layers) each student layer learns from, one "
                                          "per student layer, e.g. [3, 6, 9, 12]; null: uniform, student layer m <- teacher "
                                          "layer m * L_teacher / L_student", default=None)
    a_relations: float = setting("minilmv2: weight of the self-attention relation KL", default=1.0)
    teacher_layer: int = setting("minilmv2: the teacher layer whose relations the student's last layer learns (1..teacher "
                                 "layers; -1: the last)", default=-1)
    relation_heads: int | Literal["auto"] = setting("minilmv2: relation heads the queries, keys and values are split into (must "
                                                    "divide both models' hidden sizes); auto: the largest count <= 12 that divides "
                                                    "both (12 for base-size models, as before; 8 for 128 and 64)", default="auto")

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        weights = ("a_kl", "a_mlm", "a_hidden", "a_attention", "a_layers", "a_relations")
        if min(getattr(self, w) for w in weights) < 0:
            raise ValueError("loss weights must be >= 0")
        trained = OBJECTIVE_WEIGHTS.get(self.objective, ())  # a contributor's objective checks its own
        if trained and not any(getattr(self, w) > 0 for w in trained):
            raise ValueError(f"objective {self.objective} trains with {', '.join(trained)}: they must not all be 0")
        if self.layer_map is not None and (not self.layer_map or any(not isinstance(x, int) or isinstance(x, bool) for x in self.layer_map)):
            raise ValueError(f"layer_map must be a list of teacher layer numbers, one per student layer, or null; got {self.layer_map}")
        if self.relation_heads != "auto" and self.relation_heads < 1:
            raise ValueError(f"relation_heads must be >= 1, got {self.relation_heads}")
        if self.teacher_layer == 0 or self.teacher_layer < -1:
            raise ValueError(f"teacher_layer must be a layer number >= 1, or -1 for the last, got {self.teacher_layer}")


@dataclasses.dataclass
class TrainConfig:
    """Batch sizes, schedule, optimizer: the one source the DeepSpeed config is filled from (section `train`)."""

    micro_batch_size: int = setting("samples per rank per forward pass (on --resume: the largest the run may use; the "
                                    "global batch it began with is kept)", default=32, resume=True)
    grad_accum_steps: int = setting("micro batches per optimizer step; global batch = micro x accum x ranks (on --resume "
                                    "re-chosen to keep the run's global batch on the ranks it has now)", default=1, resume=True)
    allow_global_batch_change: bool = setting(
        "--resume on a number of ranks that cannot keep the run's global batch: continue with micro_batch_size x "
        "grad_accum_steps x ranks instead, the LR schedule continued by samples (logged)", default=False, resume=True)
    epochs: float = setting("passes over the training data (the paper: 3)", default=3.0)
    max_steps: int | None = setting("stop after this many optimizer steps instead of epochs", default=None)
    lr: float = setting("peak learning rate", default=5e-4)
    warmup_ratio: float = setting("share of steps warming up linearly", default=0.05)
    schedule: Literal["linear", "cosine"] = setting("decay after warm-up", default="linear")
    weight_decay: float = setting("AdamW weight decay (not on biases and LayerNorm)", default=0.01)
    adam_betas: list[float] = setting("AdamW betas", default_factory=lambda: [0.9, 0.98])
    adam_eps: float = setting("AdamW epsilon", default=1e-6)
    grad_clip: float = setting("gradient norm clipping (0: off)", default=1.0)
    seed: int = setting("seed of model init and dropout", default=42)
    max_nonfinite_steps: int = setting("stop when the loss is NaN/inf this many steps in a row", default=10, resume=True)

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

    every_steps: int = setting("save every N optimizer steps (and at the end; 0: only at the end)", default=1000, resume=True)
    keep: int = setting("complete checkpoints kept (older ones are deleted; >= 1: the newest is never deleted)", default=2, resume=True)
    export: bool = setting("export the student as a Hugging Face directory at the end", default=True, resume=True)

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1 (the final checkpoint is what export and --resume read), got {self.keep}")
        if self.every_steps < 0:
            raise ValueError(f"every_steps must be >= 0 (0: only at the end), got {self.every_steps}")


@dataclasses.dataclass
class LogConfig:
    """Section `log`."""

    every_steps: int = setting("log scalars every N optimizer steps", default=10, resume=True)
    tensorboard: bool = setting("write TensorBoard events under DIR/tensorboard", default=True, resume=True)
    peak_tflops: float | None = setting("device peak TFLOP/s for MFU (default: known GPUs; none on CPU)", default=None, resume=True)
    eval_every_steps: int = setting("validate on the shards' held-out split every N optimizer steps and at the end "
                                    "(0: only at the end)", default=500, resume=True)
    eval_max_samples: int = setting("validate on the first N samples of the validation split, the same in every run "
                                    "(0: all of them)", default=2048, resume=True)

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

    config: str = setting("DeepSpeed JSON (see ds_configs/), or auto: zero2-bf16 where the device has bf16 natively "
                          "(Ampere+ GPUs, CPUs with AVX-512 BF16 or AMX), zero2-fp16 on older GPUs, zero2-fp32 on other CPUs",
                          default="auto", resume=True)
    zero_stage: int | Literal["auto"] = setting("ZeRO stage (0, 1 or 2) in place of the JSON's; auto: the JSON's, except one rank "
                                                "in fp32, which runs without ZeRO (nothing to partition; measured in "
                                                "benchmarks/results/README.md)", default="auto")

    def __post_init__(self) -> None:
        if self.zero_stage not in ("auto", 0, 1, 2):
            raise ValueError(f"zero_stage must be 0, 1, 2 or auto, got {self.zero_stage!r} (ZeRO-3 partitions the weights, "
                             "which the export and the teacher-side code do not gather)")


@dataclasses.dataclass
class PerfConfig:
    """Section `perf`: speed levers. None of them changes what is computed beyond floating-point
    rounding; each was measured (benchmarks/results/README.md)."""

    pad_vocab_multiple: int = setting("pad the vocabulary rows of teacher and student to a multiple of this (aligned LM-head "
                                      "GEMMs; padding logits are cut off before the softmax, and the export drops the rows); "
                                      "1: off", default=128)
    compile: bool | Literal["auto"] = setting("torch.compile the teacher, the student and the loss (true/false); auto: on for CUDA",
                                              default="auto")
    fused_adamw: bool | Literal["auto"] = setting("torch's fused AdamW kernel (one kernel for the whole update) instead of "
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
