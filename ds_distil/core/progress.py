"""Progress of long work, on rank 0 only: a tqdm bar (rate, ETA, and figures such as the loss) when
stderr is a terminal; otherwise, in log files and SLURM jobs where a bar would be a wall of carriage
returns, a log line with the same figures every `log_every_s` seconds (EVERY_S, 30 s, by default: long work speaks at
least that often in a log file); a caller that logs lines of its own (distillation every log.every_steps) calls
`said()` after each, so that the progress line fills only the silences.

Every long loop (prepare, distill, finetune, evaluation) goes through this one class, so they look alike.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("ds_distil.core.progress")

EVERY_S = 30.0  # the longest silence of long work without a terminal


POSTFIX_EVERY_S = 1.0  # a bar's figures are read at most this often


def plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    def __init__(self, total: int | None, desc: str, unit: str = "step", enabled: bool = True, initial: int = 0,
                 log_every_s: float | None = EVERY_S, leave: bool = True, unit_scale: bool = False):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.enabled = enabled
        self.bar = None
        self.postfix: dict = {}
        self.log_every_s = log_every_s
        self.unit_scale = unit_scale
        self.t0 = self.last_log = time.perf_counter()
        self.last_postfix = float("-inf")
        self.start = initial
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=leave,
                            unit_scale=unit_scale, file=sys.stderr)

    def update(self, n: int = 1, **postfix) -> None:
        """Count `n` more; `postfix` figures shown beside (a callable is called only when shown: at most once a second
        on a bar, once per log line, so that reading e.g. a loss off the GPU does not happen every step)."""
        if not self.enabled:
            return
        self.n += n
        if postfix:
            self.postfix.update(postfix)
        if self.bar is not None:
            now = time.perf_counter()
            if postfix and now - self.last_postfix >= POSTFIX_EVERY_S:
                self.last_postfix = now
                self.bar.set_postfix(self._figures(), refresh=False)
            self.bar.update(n)
        elif self.log_every_s is not None and time.perf_counter() - self.last_log >= self.log_every_s:
            self._log_line()

    def said(self) -> None:
        """The caller logged a line of its own with the same news: the next progress line waits a full interval."""
        self.last_log = time.perf_counter()

    def _figures(self) -> dict:
        return {k: v() if callable(v) else v for k, v in self.postfix.items()}

    def _log_line(self) -> None:
        from tqdm import tqdm

        self.last_log = now = time.perf_counter()
        rate = (self.n - self.start) / max(now - self.t0, 1e-9)
        count = tqdm.format_sizeof if self.unit_scale else (lambda x: f"{x:,}")
        speed = tqdm.format_sizeof if self.unit_scale else (lambda x: f"{x:,.0f}" if x >= 100 else f"{x:.2f}")
        unit = self.unit if self.unit_scale else plural(self.unit)
        done = f"{count(self.n)}/{count(self.total)} {unit} ({100 * self.n / max(self.total, 1):.0f}%)" if self.total else f"{count(self.n)} {unit}"
        eta = f" | ETA {_clock((self.total - self.n) / rate)}" if rate > 0 and self.total else ""
        extra = "".join(f" | {k} {v}" for k, v in self._figures().items())
        # slower than one a second: the time each takes (what a training step is read by), else how many a second
        pace = f"{1 / rate:.2f} s/{self.unit}" if 0 < rate < 1 and not self.unit_scale else f"{speed(rate)} {unit}/s"
        log.info("%s: %s%s | %s%s", self.desc, done, extra, pace, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
