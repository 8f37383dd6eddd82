"""What every benchmark report carries: device, versions, config; and where it is written."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict:
    """GPU name and memory through nvidia-ml-py when there is one, else the CPU model and core count."""
    info = {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "gpu": None}
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        info["gpu"] = name.decode() if isinstance(name, bytes) else name
        info["gpu_count"] = pynvml.nvmlDeviceGetCount()
        info["gpu_memory_gib"] = round(pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30, 1)
    except Exception:  # no driver (NVMLError_LibraryNotFound), no GPU
        pass
    info["label"] = slug(info["gpu"]) if info["gpu"] else f"cpu{info['cpu_cores']}"
    return info


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "deepspeed", "transformers", "tokenizers", "webdataset", "numpy", "ds-distil"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        out["git_commit"] = None
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def write_report(what: str, result: dict, markdown: str, out_dir: Path = RESULTS) -> tuple[Path, Path]:
    """Write <what>_<device>_<date>.json and .md; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    stem = f"{what}_{result['device']['label']}_{date}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def header(title: str, result: dict, command: str) -> str:
    d, v = result["device"], result["versions"]
    device = f"GPU {d['gpu']} x{d.get('gpu_count', 1)}" if d["gpu"] else f"CPU only: {d['cpu']}, {d['cpu_cores']} cores"
    return (
        f"# {title}\n\n"
        f"- Device: {device}\n"
        f"- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + "\n"
        f"- Date: {result['date']}\n"
        f"- Reproduce: `{command}`\n\n"
    )
