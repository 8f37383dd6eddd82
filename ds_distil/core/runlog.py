"""The console's log, also in a file of the run directory (rank 0): held in memory from the start, written out once the
directory is the run's (its set-up succeeded: a run refused at set-up leaves no file behind), then appended line by
line, so that a user (or `tail -f`) reads it while the run goes on. A resumed run appends to the same file."""

from __future__ import annotations

import logging
from pathlib import Path


class _Held(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class RunLog:
    def __init__(self, enabled: bool = True):
        self.file = None
        self.held = _Held() if enabled else None
        if self.held is not None:
            logging.getLogger().addHandler(self.held)

    def open(self, path: Path) -> None:
        """Write what was held to `path` (appended), and every later line as it comes."""
        if self.held is None:
            return
        root = logging.getLogger()
        self.file = logging.FileHandler(path, mode="a", encoding="utf-8")
        console = next((h for h in root.handlers if h is not self.held and h.formatter is not None), None)
        self.file.setFormatter(console.formatter if console else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for record in self.held.records:
            self.file.handle(record)
        root.removeHandler(self.held)
        self.held = None
        root.addHandler(self.file)

    def close(self) -> None:
        root = logging.getLogger()
        for h in (self.held, self.file):
            if h is not None:
                root.removeHandler(h)
                h.close()
        self.held = self.file = None
