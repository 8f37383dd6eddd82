"""DeepSpeed glue: distributed init, the DeepSpeed config filled from the run config, the student
engine (ZeRO, trained) and the teacher (plain module, frozen, never given to DeepSpeed).

Same code for `deepspeed --num_gpus N --module ds_distil ...`, `torchrun ... -m ds_distil ...` and a
plain single process: the launchers set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*, a plain process gets
single-rank defaults. NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
from torch import nn

from pydantic import Field, model_validator

from ds_distil.core import net
from ds_distil.core.checked import Checked, check, read_json
from ds_distil.core.env_info import free_port
from ds_distil.core.errors import UserError
from ds_distil.runtime import precision as precision_rules
from ds_distil.schema.distill import DistillConfig, PerfConfig, TrainConfig

log = logging.getLogger(__name__)

# Keys of the DeepSpeed JSON that the run config owns: one source of truth.
OWNED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
              "scheduler", "gradient_clipping")


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str



def init_distributed() -> Dist:
    """Initialise torch.distributed through DeepSpeed; CUDA device per local rank, else CPU + gloo."""
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:  # a plain single process
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    import deepspeed

    from ds_distil.core.quiet import third_party_stdout

    if int(os.environ["WORLD_SIZE"]) == 1:
        # DeepSpeed compiles its shared-memory all-reduce for CPU ranks on first use, and a second process waits on the
        # build's lock in TORCH_EXTENSIONS_DIR (minutes, silently). One rank has nothing to reduce: neither build nor
        # wait. (DeepSpeed keeps this table once per process precisely so that edits to it hold.)
        deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False
    elif not cuda:
        say_op_build(SHM_COMM_OP, "DeepSpeed's shared-memory all-reduce for CPU ranks")
    backend = "nccl" if cuda else "gloo"
    fresh = not torch.distributed.is_initialized()  # (finetune calls this twice)
    iface, why = net.choose_gloo_interface()  # before the process group binds its sockets
    with third_party_stdout():  # "DeepSpeed ... shm_comm_op built successfully" on CPU; shown with --verbose
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {local_rank} but only {torch.cuda.device_count()} GPU(s) visible; "
                            "start at most one process per GPU")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and fresh:  # what runs where, from every rank: the ranks of a multi-node job name their hosts
        nccl = os.environ.get("NCCL_SOCKET_IFNAME") or "NCCL's own choice (NCCL_SOCKET_IFNAME chooses)"
        log.info("rank %d of %d (local rank %d) on %s; %s", rank, world, local_rank, net.where(iface),
                 (f"gloo over {iface}: {why}" if iface else f"gloo: {why}") if backend == "gloo" else f"NCCL over {nccl}")
    return Dist(rank, world, local_rank, device, backend)


SHM_COMM_OP = "deepspeed_shm_comm"


def say_op_build(name: str, what: str) -> None:
    """One console line (rank 0) before DeepSpeed JIT-compiles op `name`, which happens once per machine and Python /
    torch version, and makes every other process starting meanwhile wait on its lock: what the wait is for."""
    if os.environ.get("RANK", "0") != "0":
        return
    from torch.utils.cpp_extension import _get_build_directory

    build = Path(_get_build_directory(name, verbose=False))  # (creates the directory, as the build would)
    if (build / f"{name}.so").is_file():
        return
    waits = " (another process is building it: waiting for its lock)" if (build / "lock").exists() else ""
    log.info("building %s once, into %s: about a minute on 2 CPU cores%s", what, build, waits)


def close_distributed() -> None:
    """End torch.distributed before the process exits: each rank waits for the others, then the process group
    is destroyed. Left to the interpreter's teardown, a rank can abort at exit after its work is done
    ('terminate called without an active exception', status -6: seen on 2 CPU ranks under gloo, once in a
    local 2-rank study's finetuning stage, once in a 2-rank finetune). Call only where every rank gets to."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def total_steps(train: TrainConfig, micro_steps_per_epoch: int) -> int:
    """Optimizer steps of the run: max_steps, or epochs x (micro batches per epoch / accumulation)."""
    if train.max_steps is not None:
        return train.max_steps
    return max(1, round(train.epochs * micro_steps_per_epoch / train.grad_accum_steps))


DS_CONFIGS = Path(__file__).resolve().parents[2] / "ds_configs"  # the checkout's ds_configs/


def bf16_capable(device: torch.device) -> bool:
    """bf16 computed natively on `device` (runtime/precision.py): a GPU with it, or a CPU with AVX-512 BF16 or AMX."""
    return precision_rules.bf16_native(device)


def resolve_ds_json(choice: str, device: torch.device) -> str:
    """`auto`: bf16 where the device has it natively (Ampere and newer GPUs: no loss scaler, no overflow skips, the fp16
    range problems gone; CPUs with AVX-512 BF16 or AMX), fp16 on older GPUs, fp32 on a CPU that would emulate bf16."""
    if choice != "auto":
        return choice
    return str(DS_CONFIGS / f"zero2-{precision_rules.auto_precision(device)}.json")


def fused_adamw(choice: bool | str, device: torch.device) -> bool:
    """torch's fused AdamW (one kernel for the whole update; CUDA and CPU since torch 2.4)."""
    if choice == "auto":
        return device.type in ("cuda", "cpu")
    return choice is True


def compile_enabled(perf: PerfConfig, device: torch.device) -> bool:
    return perf.compile is True or (perf.compile == "auto" and device.type == "cuda")


def build_ds_config(cfg: DistillConfig, world_size: int, num_steps: int, device: torch.device, warmup_steps: int | None = None) -> dict:
    """The DeepSpeed JSON named by cfg.deepspeed.config, completed from cfg.train and cfg.perf."""
    return ds_config_from(cfg.train, resolve_ds_json(cfg.deepspeed.config, device), world_size, num_steps,
                          fused=fused_adamw(cfg.perf.fused_adamw, device), stage=cfg.deepspeed.zero_stage, warmup_steps=warmup_steps)


def zero_stage(choice: int | str, ds: dict, world_size: int) -> int:
    """`auto`: the JSON's ZeRO stage, except for one rank in fp32: no ZeRO (stage 0). One rank has nothing to partition,
    and ZeRO's flat buffers cost copies every step (0.30 s of dBERT Tiny's 0.64 s finetuning step on 2 CPU cores:
    benchmarks/results/step_phases_cpu2_2026-12-07.md); fp16 and bf16 keep the JSON's stage until a GPU has measured
    theirs."""
    if choice != "auto":
        return int(choice)
    json_stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    return 0 if world_size == 1 and precision(ds) == "fp32" else json_stage


def ds_config_from(t: TrainConfig, json_path: str, world_size: int, num_steps: int, fused: bool = False,
                   stage: int | str = "auto", warmup_steps: int | None = None) -> dict:
    """A DeepSpeed JSON (ZeRO, precision) completed with batch sizes, optimizer, schedule and clipping from `t`, and
    the ZeRO stage `stage` chooses (`zero_stage`). The schedule runs `num_steps` steps, warming up for `warmup_steps`
    (default: t.warmup_ratio of them)."""
    path = Path(json_path)
    if not path.is_file():
        raise UserError(f"deepspeed.config {path} does not exist; pass one of ds_configs/*.json")
    remedy = "fix it, or pass one of ds_configs/*.json as deepspeed.config"
    ds = read_json(path, remedy)
    check(DeepSpeedJSON, ds, f"deepspeed.config {path}", remedy)
    owned = [k for k in OWNED_KEYS if k in ds]
    if owned:
        raise UserError(f"{path} sets {', '.join(owned)}: these come from the run config's `train` section "
                        "(one source of truth); remove them from the JSON")
    warmup = max(1, round(t.warmup_ratio * num_steps)) if warmup_steps is None else warmup_steps
    if t.schedule == "linear":
        scheduler = {"type": "WarmupDecayLR", "params": {"total_num_steps": num_steps, "warmup_min_lr": 0.0, "warmup_max_lr": t.lr,
                                                          "warmup_num_steps": warmup, "warmup_type": "linear"}}
    else:
        scheduler = {"type": "WarmupCosineLR", "params": {"total_num_steps": num_steps, "warmup_min_ratio": 0.0,
                                                           "warmup_num_steps": warmup, "cos_min_ratio": 0.0, "warmup_type": "linear"}}
    # torch's AdamW (no JIT-compiled DeepSpeed op to build); DeepSpeed passes the other params on to
    # it, so "fused" selects torch's single-kernel implementation
    adam = {"lr": t.lr, "betas": list(t.adam_betas), "eps": t.adam_eps, "weight_decay": t.weight_decay, "torch_adam": True,
            "adam_w_mode": True}
    if fused:
        adam["fused"] = True
    ds.update(
        train_micro_batch_size_per_gpu=t.micro_batch_size,
        gradient_accumulation_steps=t.grad_accum_steps,
        train_batch_size=t.micro_batch_size * t.grad_accum_steps * world_size,
        gradient_clipping=t.grad_clip,
        optimizer={"type": "AdamW", "params": adam},
        scheduler=scheduler,
    )
    ds["zero_optimization"] = {**ds.get("zero_optimization", {}), "stage": zero_stage(stage, ds, world_size)}
    ds.setdefault("steps_per_print", 10**9)  # we log ourselves
    ds.setdefault("wall_clock_breakdown", False)
    if not torch.cuda.is_available():  # (fp16 the device lacks is refused before DeepSpeed sees it: check_precision_supported)
        precision_rules.warn_if_emulated(f"the student ({path.name})", precision(ds), torch.device("cpu"))
    return ds


class _Precision(Checked):
    enabled: bool = False


class _Zero(Checked):
    stage: Annotated[int, Field(ge=0, le=3)] = 0


class DeepSpeedJSON(Checked):
    """What of a DeepSpeed JSON we read before DeepSpeed does (precision, ZeRO stage); the rest is DeepSpeed's to check."""

    fp16: _Precision | None = None
    bf16: _Precision | None = None
    zero_optimization: _Zero | None = None

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, data):
        if not isinstance(data, dict):
            raise ValueError(f"holds a JSON {type(data).__name__}, not an object of DeepSpeed settings")
        if "bfloat16" in data:
            raise ValueError("names its bf16 section 'bfloat16': call it 'bf16' (the name ds-distil reads)")
        return data

    @model_validator(mode="after")
    def _one_precision(self):
        if self.fp16 and self.fp16.enabled and self.bf16 and self.bf16.enabled:
            raise ValueError("enables both fp16 and bf16: enable one")
        return self


def check_precision_supported(ds_config: dict) -> None:
    """DeepSpeed's own test of the device's precision (its accelerator's is_fp16_supported / is_bf16_supported), made
    before the config is handed over: deepspeed.initialize would refuse with a traceback ("Type fp16 is not supported on
    your device"), after the models are built. fp16 on a CPU needs fp16 hardware (AVX512-FP16 / AMX-FP16)."""
    from deepspeed.accelerator import get_accelerator

    accelerator, wanted = get_accelerator(), precision(ds_config)
    supported = {"fp16": accelerator.is_fp16_supported, "bf16": accelerator.is_bf16_supported}.get(wanted)
    if supported is not None and not supported():
        raise UserError(f"the DeepSpeed config enables {wanted}, which this device ({accelerator.device_name()}) does not support; "
                        f"pass deepspeed.config=ds_configs/zero2-fp32.json{'' if wanted == 'bf16' else ' (or zero2-bf16.json)'}, "
                        "or deepspeed.config=auto")


def precision(ds_config: dict) -> str:
    if ds_config.get("fp16", {}).get("enabled"):
        return "fp16"
    if ds_config.get("bf16", {}).get("enabled"):
        return "bf16"
    return "fp32"


def loss_scale(engine) -> float | None:
    """An fp16 engine's current loss scale; None for bf16 and fp32 (no scaler)."""
    return float(engine.optimizer.cur_scale) if precision(engine.config) == "fp16" else None


def teacher_dtype(choice: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 where the device has it natively, else fp16 on a GPU and fp32 on a CPU (runtime/precision.py). A
    teacher forced into bf16 on a CPU that emulates it gets one warning with the measured cost."""
    name = precision_rules.auto_precision(device) if choice == "auto" else choice
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]
    precision_rules.warn_if_emulated("the teacher (teacher.dtype)", dtype, device)
    return dtype


def place_teacher(teacher: nn.Module | None, device: torch.device, dtype: torch.dtype) -> nn.Module | None:
    """Frozen inference copy on this rank's device: eval mode, no grads, cast once."""
    if teacher is None:
        return None
    teacher = teacher.to(device=device, dtype=dtype).eval()
    teacher.requires_grad_(False)
    return teacher


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights only, not on biases and LayerNorm; frozen parameters left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def param_group_names(model: nn.Module, weight_decay: float) -> list[list[str]]:
    """The names of `param_groups`' parameters, group by group: the order a torch optimizer numbers them in its
    state_dict (how a checkpoint without ZeRO refers to them)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in param_groups(model, weight_decay)]


def initialize(model: nn.Module, ds_config: dict, weight_decay: float):
    """The DeepSpeed engine of `model` under `ds_config` (ds_config_from's). Without ZeRO in fp32 the optimizer is
    runtime.optimizer.ClippedAdamW, built here from the config's AdamW and clipping (DeepSpeed's own would neither skip
    a non-finite step nor clip in one pass), and one rank skips the gradient all-reduce, which has no peer to reduce
    with: DeepSpeed's own switch for an engine without a communication backend."""
    import deepspeed

    check_precision_supported(ds_config)
    groups = param_groups(model, weight_decay)
    if ds_config["zero_optimization"]["stage"] == 0 and precision(ds_config) == "fp32":
        from ds_distil.runtime.optimizer import ClippedAdamW

        ds_config = dict(ds_config)
        adam = {k: v for k, v in ds_config.pop("optimizer")["params"].items() if k not in ("torch_adam", "adam_w_mode")}
        adam["betas"] = tuple(adam["betas"])
        optimizer = ClippedAdamW(groups, max_norm=ds_config.get("gradient_clipping", 0.0), **adam)
        ds_config["gradient_clipping"] = 0.0  # the optimizer clips
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        if engine.dp_world_size == 1:
            engine.enable_backward_allreduce = False
        return engine
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config)
    return engine
