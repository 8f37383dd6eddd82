"""What every benchmark report carries: device, versions, config; and where it is written."""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
from pathlib import Path

from ds_distil.core.env_info import device_info, versions  # noqa: F401  (re-exported for the benchmarks)

RESULTS = Path(__file__).parent / "results"


def init_one_process():
    """torch.distributed for this process alone, even when started from inside a launcher's rank (a free port), on
    DeepSpeed's CPU accelerator where there is no GPU: ds_distil.runtime.engine's Dist."""
    import os

    import torch

    from ds_distil.core.env_info import free_port
    from ds_distil.runtime.engine import init_distributed

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    return init_distributed()


def sync(device) -> None:
    """Wait for the device's queued work (a GPU's), so that a timer reads finished work."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_out_argument(p: argparse.ArgumentParser, *aliases: str) -> None:
    p.add_argument("--out", *aliases, dest="out", default=str(RESULTS), help="folder for the reports (default: benchmarks/results)")


def parse_or_measure(p: argparse.ArgumentParser, measure) -> argparse.Namespace | None:
    """Adds --out and the hidden --one SPEC; with --one, runs measure(SPEC) here, prints its JSON and returns None."""
    add_out_argument(p)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return None
    return args


def run_isolated(module: str, spec: dict) -> dict:
    """measure(spec) of `module` in a fresh process (so that its peak memory is its own); a failure
    becomes {**spec, "error": the last line of its stderr}."""
    proc = subprocess.run([sys.executable, "-m", module, "--one", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {**spec, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def command_line(module: str) -> str:
    """The command that reproduces this run: `python -m MODULE` with the arguments it was given, less --out."""
    given, args, i = sys.argv[1:], [], 0
    while i < len(given):
        if given[i] == "--out":
            i += 2
            continue
        if not given[i].startswith("--out="):
            args.append(shlex.quote(given[i]))
        i += 1
    return " ".join(["python -m", module, *args])


def write_report(what: str, result: dict, markdown: str, out_dir: Path = RESULTS) -> tuple[Path, Path]:
    """Write <what>_<device>_<date>.json and .md; returns both paths. The folder is claimed for
    benchmark results (ds_distil.core.rundir): a folder of something else is refused, two writers at once too."""
    from ds_distil.core.rundir import claim

    date = datetime.date.today().isoformat()
    stem = f"{what}_{result['device']['label']}_{date}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    with claim(out_dir, "benchmarks"):
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
