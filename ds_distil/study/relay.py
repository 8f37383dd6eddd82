"""The running stage's progress, relayed to the study's console.

Every stage writes its log to OUT/logs/STAGE.log, where its progress lines (core/progress.py: at least every 30 s
without a terminal; distillation's step lines) land. The runner reads the tail of the running stage's log and shows
the newest such line: on a terminal as one line rewritten in place, elsewhere (a log file, a SLURM job) as a line
whenever it changed, at most every 30 s. So a study never goes silent for the length of a stage.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from ds_distil.core.progress import EVERY_S

# what stages log as progress: the progress lines, distillation's step and validation lines, a teacher cache's splits
PROGRESS = re.compile(r"(?:ds_distil\.core\.progress|ds_distil\.distill\.loop|ds_distil\.distill\.cache_build): (.+)$")
TAIL_BYTES = 16_384


def latest_progress(log: Path) -> str | None:
    """The newest progress line in the tail of `log` (its message), or None."""
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        m = PROGRESS.search(line)
        if m:
            return m.group(1).strip()
    return None


class Relay:
    """Shows the running stages' progress; `newline()` before the runner prints a line of its own."""

    def __init__(self, stream=None, every_s: float = EVERY_S):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every_s = 1.0 if self.tty else every_s
        self.last_shown: str | None = None
        self.last_time = 0.0
        self.open = False  # a rewritten line is on the terminal

    def poll(self, running: list[tuple[str, Path]]) -> None:
        """`running`: (stage name, its log) of each running stage."""
        now = time.monotonic()
        if now - self.last_time < self.every_s:
            return
        self.last_time = now
        parts = [f"{name}: {line}" for name, log in running if (line := latest_progress(log))]
        if not parts:
            return
        text = " || ".join(parts)
        if text == self.last_shown:
            return
        self.last_shown = text
        if self.tty:
            width = 200
            self.stream.write("\r\033[K    " + text[:width])
            self.open = True
        else:
            self.stream.write(f"    {text}\n")
        self.stream.flush()

    def newline(self) -> None:
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False
