"""What ran where: device, package versions, git commit. Written next to every run and benchmark."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    """A TCP port the OS has just found free on this host (for a single process's or a local launch's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> dict | None:
    """Name, count and memory of the GPUs through nvidia-ml-py; None without a driver or GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        return {"name": name.decode() if isinstance(name, bytes) else name, "count": pynvml.nvmlDeviceGetCount(),
                "memory_gib": round(pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30, 1)}
    except Exception:  # NVMLError_LibraryNotFound (no driver), no device
        return None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_info() -> dict:
    gpu = gpu_info()
    info = {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "gpu": gpu["name"] if gpu else None}
    if gpu:
        info.update(gpu_count=gpu["count"], gpu_memory_gib=gpu["memory_gib"])
    info["label"] = slug(info["gpu"]) if info["gpu"] else f"cpu{info['cpu_cores']}"
    return info


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "deepspeed", "transformers", "tokenizers", "webdataset", "numpy", "ds-distil"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    out["git_commit"] = git_commit()
    return out


def command_line(argv: list[str] | None = None) -> dict:
    """How this process was started, for the run's record and the model card: the ds-distil command
    line (without the --local_rank the DeepSpeed launcher adds) and the launcher, as far as the
    environment tells (srun, torchrun, deepspeed; None for a plain process)."""
    import shlex
    import sys

    argv = list(sys.argv if argv is None else argv)
    if argv and (Path(argv[0]).name == "ds-distil" or argv[0].endswith("ds_distil/__main__.py")):
        argv[0] = "ds-distil"
    local_rank = [a for a in argv if a.startswith(("--local_rank", "--local-rank"))]
    env = os.environ
    launcher = ("srun" if "SLURM_PROCID" in env and "SLURM_JOB_ID" in env else "torchrun" if "TORCHELASTIC_RUN_ID" in env
                else "deepspeed" if local_rank else None)
    return {"command": shlex.join(a for a in argv if a not in local_rank), "launcher": launcher,
            "world_size": int(env.get("WORLD_SIZE", "1")), "cwd": os.getcwd()}
