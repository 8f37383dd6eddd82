"""Metrics on rank 0: TensorBoard scalars, a metrics.jsonl mirror, console lines, a progress bar;
device stats through nvidia-ml-py (GPU) or psutil (CPU RSS)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ds_distil.core.io import atomic_write
from ds_distil.core.progress import EVERY_S, Progress

log = logging.getLogger(__name__)


class DeviceStats:
    def __init__(self, device: torch.device):
        self.device = device
        self.handle = None
        self.name = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
                name = pynvml.nvmlDeviceGetName(self.handle)
                self.name = name.decode() if isinstance(name, bytes) else name
            except Exception as e:  # NVMLError_LibraryNotFound and friends: no driver library
                log.warning("nvidia-ml-py unavailable (%s): no GPU utilisation figures", e)
                self.name = torch.cuda.get_device_name(device)

    def read(self) -> dict[str, float]:
        if self.device.type == "cuda":
            out = {"gpu/max_allocated_gib": torch.cuda.max_memory_allocated(self.device) / 2**30}
            if self.handle is not None:
                import pynvml

                mem = pynvml.nvmlDeviceGetMemoryInfo(self.handle)
                out["gpu/memory_used_gib"] = mem.used / 2**30
                out["gpu/utilization_pct"] = float(pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            return out
        import psutil

        return {"cpu/rss_gib": psutil.Process().memory_info().rss / 2**30}


def _lines_up_to(path: Path, step: int) -> list[str]:
    """The lines of metrics.jsonl up to `step`, less the events of an earlier start from `step` (a resume killed before
    its next checkpoint: this one writes its own); a torn last line (a run killed mid-write) or a line that is not ours
    is dropped and reported rather than stopping the resume."""
    kept, dropped = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
            if record["step"] < step or (record["step"] == step and "event" not in record):
                kept.append(line)
            continue
        except (ValueError, KeyError, TypeError):
            dropped.append(n)
    if dropped:
        log.warning("%s: dropped %d unreadable line(s) (line %s%s): a line torn by a killed run, or not written by ds-distil",
                    path, len(dropped), dropped[0], ", ..." if len(dropped) > 1 else "")
    return kept


class Metrics:
    """Writes only on rank 0; other ranks get a no-op."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, total_steps: int, start_step: int, desc: str = "distill",
                 log_every_s: float | None = EVERY_S):
        self.enabled = enabled
        self.writer = None
        self.bar = None
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard drops what an earlier, killed session logged from this step on (a resumed run logs it again)
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step)
            self.writer.flush()  # its thread opens the event file: an error there (a full disk) surfaces here, at the start
        path = run_dir / "metrics.jsonl"
        if path.exists():  # drop what a killed run logged after the checkpoint we continue from
            kept = _lines_up_to(path, start_step)
            atomic_write(path, "".join(line + "\n" for line in kept))  # replaced whole: a kill here loses no line
        self.jsonl = open(path, "a", encoding="utf-8")
        # log_every_s: progress lines where there is no terminal for a bar, in the silences between the caller's own lines
        self.bar = Progress(total_steps, desc, "step", initial=start_step, log_every_s=log_every_s)

    def step(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n, **postfix)

    def said(self) -> None:
        """A console line of the caller's own went out (distillation's step lines): the progress line waits."""
        if self.bar is not None:
            self.bar.said()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in values.items():
            if self.writer is not None and v is not None:
                self.writer.add_scalar(k, v, step)
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        self.jsonl.flush()

    def event(self, step: int, name: str, text: str, **fields) -> None:
        """A line of metrics.jsonl saying what happened at `step` (e.g. a resume on another number of ranks), not a
        scalar: {"step", "time", "event", "text", ...fields}."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), "event": name, "text": text, **fields}) + "\n")
        self.jsonl.flush()

    def hparams(self, step: int, hparams: dict, metrics: dict[str, float]) -> None:
        """Hyper-parameters and the scores they gave, for TensorBoard's HParams tab: written into this run's own
        event file (SummaryWriter.add_hparams would start a run of its own in a subdirectory), metrics as scalars."""
        if not self.enabled:
            return
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items() if v is not None}  # unset: not "None"
        if self.writer is not None:
            from torch.utils.tensorboard.summary import hparams as hparams_summary

            writer = self.writer._get_file_writer()
            for summary in hparams_summary(clean, metrics):
                writer.add_summary(summary, step)
        self.scalars(step, metrics)
        self.jsonl.write(json.dumps({"step": step, "hparams": clean}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        self.jsonl.close()
