"""Precision by what the device can do: where bf16 is native, and what forcing it elsewhere costs.

`auto` precision (the student's DeepSpeed JSON, the teacher's dtype, finetuning) picks bf16 where the device computes
it natively and fp32 on a CPU that does not: a GPU with bf16 (Ampere and newer), or a CPU with AVX-512 BF16 or AMX
(asked of torch's own cpuinfo, never guessed from the vendor). A CPU without either emulates bf16 matmuls, tens of
times slower than fp32 (60x for a 2048x256x1024 matmul on an AVX2-only AMD EPYC, torch 2.13): a run that forces bf16
there gets one warning with the factor measured by a short probe, once per process.

`DS_DISTIL_CPU_BF16=1|0` overrides the CPU's answer (tests force either kind; a user can too). The test suite sets it
to 0 so that its figures do not depend on the CPU it happens to run on.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from ds_distil.core.errors import UserError

log = logging.getLogger(__name__)

CPU_BF16_ENV = "DS_DISTIL_CPU_BF16"
_warned: set[str] = set()


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX tiles), per torch's cpuinfo; the environment
    variable DS_DISTIL_CPU_BF16=1|0 overrides it."""
    forced = os.environ.get(CPU_BF16_ENV)
    if forced is not None and forced != "":
        if forced not in ("0", "1"):
            raise UserError(f"{CPU_BF16_ENV}={forced!r}: use 1 (the CPU computes bf16 natively) or 0 (it does not), or unset it")
        return forced == "1"
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def bf16_native(device: torch.device) -> bool:
    """bf16 computed natively on `device`: a GPU that has it without emulation, or a CPU with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_bf16_native()
    return False


def auto_precision(device: torch.device) -> str:
    """`auto`'s choice: bf16 where native; else fp16 on a GPU (with DeepSpeed's loss scaler), fp32 on a CPU."""
    if bf16_native(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def cpu_capability() -> str:
    """What the CPU offers, for a console line or a benchmark's header: torch's SIMD level and the bf16 answer."""
    forced = f" ({CPU_BF16_ENV}={os.environ[CPU_BF16_ENV]})" if os.environ.get(CPU_BF16_ENV) else ""
    return f"{torch.backends.cpu.get_cpu_capability()}, bf16 {'native' if cpu_bf16_native() else 'emulated'}{forced}"


def matmul_factor(n: int = 256, budget_s: float = 2.0) -> dict:
    """How much slower a bf16 matmul runs than an fp32 one here: an n x n x n product timed in each dtype (median of up
    to 5 repetitions after a warm-up, fewer where one takes long). ~0.1 s where bf16 is native; ~0.5 s where it is
    emulated at n = 256."""
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        t0 = time.perf_counter()
        a @ b  # warm-up (and a first measure of how long one takes)
        first = time.perf_counter() - t0
        times = []
        for _ in range(5 if first < budget_s / 10 else 1):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        out[str(dtype).removeprefix("torch.")] = sorted(times)[len(times) // 2]
    out["factor"] = out["bfloat16"] / max(out["float32"], 1e-9)
    out["n"] = n
    return out


def _times(factor: float) -> str:
    return f"{factor:.0f}x slower than" if factor >= 2 else f"at {factor:.2f}x the time of"


def warn_if_emulated(what: str, dtype: torch.dtype | str, device: torch.device) -> str | None:
    """One warning per process where `what` (e.g. "the teacher", "the student's DeepSpeed JSON") runs in bf16 on a CPU
    that only emulates it, with the factor a short probe measured; the line, or None where there is nothing to say.
    Rank 0 only speaks."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if device.type != "cpu" or name not in ("bf16", "bfloat16") or cpu_bf16_native() or "cpu-bf16" in _warned:
        return None
    _warned.add("cpu-bf16")
    probe = matmul_factor()
    line = (f"{what} runs in bf16, but this CPU has no native bf16 (no AVX-512 BF16 or AMX; {torch.backends.cpu.get_cpu_capability()}): "
            f"bf16 matmuls run {_times(probe['factor'])} fp32 here (a {probe['n']}^3 product: {probe['bfloat16'] * 1e3:.1f} ms "
            f"against {probe['float32'] * 1e3:.1f} ms); use fp32 (deepspeed.config=auto and teacher.dtype=auto choose it on this CPU)")
    if os.environ.get("RANK", "0") == "0":
        log.warning("%s", line)
    return line
