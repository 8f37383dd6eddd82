"""Long work speaks without a terminal: a progress line at least every EVERY_S (30 s), with rate and ETA from the steps
measured, filling only the silences between a caller's own lines."""

from __future__ import annotations

import logging

from ds_distil.core import progress
from ds_distil.core.progress import EVERY_S, Progress


def test_without_a_terminal_a_line_comes_every_interval_and_a_callers_line_postpones_it(monkeypatch, caplog):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    assert EVERY_S <= 30
    with caplog.at_level(logging.INFO, logger="ds_distil.core.progress"):
        bar = Progress(100, "distill", "step")  # stderr is not a terminal under pytest
        assert bar.bar is None and bar.log_every_s == EVERY_S
        clock[0] += 10
        bar.update(5, loss="7.123")
        assert not caplog.records  # 10 s: not yet
        clock[0] += 25
        bar.update(5)
        assert len(caplog.records) == 1
        line = caplog.records[0].getMessage()
        assert line.startswith("distill: 10/100 steps (10%) | loss 7.123 | 3.50 s/step | ETA 5:15"), line  # slower than 1/s: s/step
        clock[0] += 20
        bar.said()  # the caller logged its own step line: the silence starts again
        clock[0] += 20
        bar.update(1)
        assert len(caplog.records) == 1
        clock[0] += 11
        bar.update(1)
        assert len(caplog.records) == 2


def test_progress_lines_read_the_latest_figure_when_shown_and_give_the_time_per_slow_step(caplog, monkeypatch):
    """Issue 40: a loss read off the device only when a line is shown (the latest one, not the last logged one); steps
    slower than one a second in seconds per step, with the ETA; "batches", not "batchs"."""
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    bar = progress.Progress(100, "finetune", "step", log_every_s=60.0)
    reads = []
    with caplog.at_level(logging.INFO, logger="ds_distil.core.progress"):
        for step in range(1, 31):
            now[0] = 4.0 * step  # a step takes 4 s
            bar.update(1, loss=lambda v=1.0 / step: reads.append(v) or f"{v:.4f}")
    assert len(reads) == len(caplog.messages) == 2  # read for each line shown, never per step
    assert caplog.messages[-1].startswith(f"finetune: 30/100 steps (30%) | loss {1 / 30:.4f} | 4.00 s/step | ETA 4:40")
    assert "batches" in progress.plural("batch") and progress.plural("step") == "steps"
