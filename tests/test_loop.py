"""The loop, in this process, driven by small fake components: it trains to the step count, logs every term of the
objective (metrics.jsonl, TensorBoard, console) from the objective's declaration, validates, checkpoints on its
cadence, stops for a signal with a checkpoint and exit 75, and refuses to go on after non-finite losses."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from helpers.extra_objective import Extra

from ds_distil.core.config import from_dict
from ds_distil.core.errors import UserError
from ds_distil.core.signals import EXIT_PREEMPTED, STOP_SIGNALS
from ds_distil.distill.loop import Components, TrainerState, fit
from ds_distil.runtime.engine import Dist
from ds_distil.runtime.flops import Arch
from ds_distil.runtime.metrics import Metrics
from ds_distil.schema.distill import DistillConfig


class FakeEngine:
    """What the loop reads of a DeepSpeed engine; an accumulation boundary every `accum` micro steps."""

    def __init__(self, accum: int = 1):
        self.accum, self.calls, self.skipped_steps, self.config = accum, 0, 0, {}

    def gradient_accumulation_steps(self) -> int:
        return self.accum

    def get_lr(self):
        return [0.001]

    def get_global_grad_norm(self):
        return 1.5


class FakeStep:
    """Statistics as DistillStep returns them: total, each term, tokens, samples, masked, non-finite."""

    def __init__(self, engine: FakeEngine, objective, nonfinite_from: int | None = None, signal_at: int | None = None):
        self.engine, self.objective = engine, objective
        self.stat_names = ("total", *(t.name for t in objective.terms), "tokens", "samples", "masked", "nonfinite")
        self.nonfinite_from, self.signal_at, self.last = nonfinite_from, signal_at, None

    def __call__(self, batch) -> torch.Tensor:
        self.engine.calls += 1
        n = self.engine.calls
        if self.signal_at == n:
            os.kill(os.getpid(), signal.SIGUSR1)  # as SLURM would: the loop finishes its step, checkpoints, stops
        terms = [0.1 * (i + 1) for i in range(len(self.objective.terms))]
        bad = self.nonfinite_from is not None and n >= self.nonfinite_from
        return torch.tensor([float("nan") if bad else sum(terms), *terms, 100.0, 2.0, 15.0, float(bad)], dtype=torch.float64)

    def window(self, batches) -> torch.Tensor:
        return sum(self(b) for b in batches)


class FakeCheckpoints:
    def __init__(self, run_dir):
        self.saved, self.run_dir = [], run_dir

    def save(self, step, trainer, data):
        self.saved.append((step, trainer, data))


def components(tmp_path, steps=6, accum=1, nonfinite_from=None, signal_at=None, validator=None, **cfg) -> Components:
    config = from_dict(DistillConfig, {"data": {"shards": "-"}, "teacher": {"preset": "tiny"},
                                       "train": {"max_steps": steps, "grad_accum_steps": accum, "max_nonfinite_steps": 3},
                                       "log": {"every_steps": 2, "eval_every_steps": 3}, "checkpoint": {"every_steps": 4}, **cfg})
    objective = Extra(config.loss)
    engine = FakeEngine(accum)
    stream = SimpleNamespace(seq_len=16, steps_per_epoch=100, position=SimpleNamespace(epoch=0, step=0), epoch_progress=lambda: 0.0,
                             state_dict=lambda: {"position": {"epoch": 0, "step": engine.calls}}, abandon=lambda: None)
    return Components(config, Dist(0, 1, 0, torch.device("cpu"), "none"), engine, stream, objective,
                      SimpleNamespace(arch=None, log_values=lambda b: {}), FakeStep(engine, objective, nonfinite_from, signal_at),
                      validator, FakeCheckpoints(tmp_path), Metrics(tmp_path, True, True, steps, 0), TrainerState(), steps,
                      Arch(2, 64, 128, 1000), None, SimpleNamespace(read=lambda: {"cpu/rss_gib": 1.0}), batches=iter(lambda: {}, None))


@pytest.fixture
def keep_signal_handlers():
    """fit() installs SIGUSR1/SIGTERM handlers in this (pytest's) process: put the old ones back."""
    old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    yield
    for s, h in old.items():
        signal.signal(s, h)


def scalars(tmp_path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_fit_trains_logs_every_term_validates_and_checkpoints(tmp_path, keep_signal_handlers, caplog):
    validated = []

    def validator(engine):
        validated.append(engine.calls)
        return {"val/mlm_loss": 2.0, "val/extra": 0.25, "val/samples": 4.0, "val/masked_tokens": 9.0, "val/seconds": 0.1,
                "val/perplexity": 7.39, "val/kl": 0.5}

    c = components(tmp_path, steps=6, accum=2, validator=validator)
    with caplog.at_level(logging.INFO, logger="ds_distil.distill.loop"):
        assert fit(c) == 0
    assert c.state.step == 6 and c.state.micro_steps == 12 and c.state.tokens == 1200 and c.state.samples == 24
    assert validated == [6, 12]  # steps 3 and 6 (every 3 and at the end), after the step's micro batches
    assert [s for s, _, _ in c.checkpoints.saved] == [4, 6]  # every 4 and at the end
    step, trainer, data = c.checkpoints.saved[-1]
    assert trainer["step"] == 6 and trainer["val"]["step"] == 6 and data == {"position": {"epoch": 0, "step": 12}}
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in lines if "loss/total" in r]
    assert [r["step"] for r in logged] == [2, 4, 6]
    for r in logged:  # each term, from the objective's declaration: the mean over the window's micro steps
        assert r["loss/mlm"] == pytest.approx(0.1) and r["loss/kl"] == pytest.approx(0.2) and r["loss/extra"] == pytest.approx(0.3)
        assert r["loss/total"] == pytest.approx(0.6) and r["lr"] == 0.001 and r["grad_norm"] == 1.5 and r["cpu/rss_gib"] == 1.0
    assert [r["step"] for r in lines if "val/extra" in r] == [3, 6]
    tb = scalars(tmp_path)
    assert [s for s, _ in tb["loss/extra"]] == [2, 4, 6] and tb["val/extra"] == [(3, 0.25), (6, 0.25)]
    console = [m for m in caplog.messages if m.startswith("step ")]
    assert "step 2/6 | loss 0.6000 | mlm loss 0.1000 | kl 0.2000 | extra 0.3000 | lr 1.00e-03" in console[0]
    assert any(m.startswith("step 3 validation | mlm loss 2.0000 | perplexity 7.39 | kl 0.5000 | extra 0.2500") for m in console)


def test_a_stop_signal_ends_the_step_checkpoints_and_exits_for_requeue(tmp_path, keep_signal_handlers):
    c = components(tmp_path, steps=10, signal_at=3)
    assert fit(c) == EXIT_PREEMPTED
    assert c.state.step == 3 and [s for s, _, _ in c.checkpoints.saved] == [3]


def slow_batches(ready: int, delay_s: float):
    """`ready` batches at once, then each after `delay_s` (a data loader that is stuck, for a long delay)."""
    for _ in range(ready):
        yield {}
    while True:
        time.sleep(delay_s)  # one sleep: a signal handler that raises ends it
        yield {}


def signal_later(seconds: float, *signums: int) -> threading.Timer:
    """Send this process each of `signums` (0.2 s apart) after `seconds`, as SLURM or a user would while it waits."""

    def send():
        for i, s in enumerate(signums):
            if i:
                time.sleep(0.2)
            os.kill(os.getpid(), s)

    timer = threading.Timer(seconds, send)
    timer.start()
    return timer


def test_a_stop_signal_while_the_next_batch_never_comes_exits_for_requeue_after_the_grace_period(
        tmp_path, keep_signal_handlers, monkeypatch, caplog):
    """Issue 25: a run stuck waiting for a batch used to log "will checkpoint after the current step" and never stop."""
    monkeypatch.setattr("ds_distil.core.signals.DATA_WAIT_GRACE_S", 0.5)
    c = components(tmp_path, steps=10)
    c.batches = slow_batches(2, delay_s=60)  # (60: the old loop took it, 60 s late)
    alarm_handler = signal.getsignal(signal.SIGALRM)
    timer = signal_later(0.5, signal.SIGTERM)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert fit(c) == EXIT_PREEMPTED
    timer.join()
    assert time.monotonic() - start < 10  # the signal at 0.5 s, the grace period 0.5 s
    assert c.state.step == 2 and c.checkpoints.saved == []  # no step to finish: nothing new to save
    assert "no input came within 0.5 s of the stop request: stopping at step 2 without a checkpoint; no checkpoint exists yet" \
        in caplog.text
    assert signal.getsignal(signal.SIGALRM) == alarm_handler  # the timer's handler is the process's own again


def test_a_batch_that_comes_within_the_grace_period_is_trained_on_and_checkpointed(tmp_path, keep_signal_handlers, monkeypatch):
    monkeypatch.setattr("ds_distil.core.signals.DATA_WAIT_GRACE_S", 30.0)
    c = components(tmp_path, steps=10)
    c.batches = slow_batches(2, delay_s=1.0)
    timer = signal_later(0.3, signal.SIGTERM)  # while the third batch is on its way
    assert fit(c) == EXIT_PREEMPTED
    timer.join()
    assert c.state.step == 3 and [s for s, _, _ in c.checkpoints.saved] == [3]


def test_more_stop_signals_while_waiting_change_nothing(tmp_path, keep_signal_handlers, monkeypatch):
    """SLURM and the launchers may signal more than once: the batch that comes within the grace period is still trained
    on and checkpointed (a repeated signal neither cuts the wait short nor extends it)."""
    monkeypatch.setattr("ds_distil.core.signals.DATA_WAIT_GRACE_S", 30.0)
    c = components(tmp_path, steps=10)
    c.batches = slow_batches(1, delay_s=1.5)
    timer = signal_later(0.3, signal.SIGUSR1, signal.SIGTERM, signal.SIGUSR1)
    assert fit(c) == EXIT_PREEMPTED
    timer.join()
    assert c.state.step == 2 and [s for s, _, _ in c.checkpoints.saved] == [2]


def test_nonfinite_losses_are_skipped_then_refused(tmp_path, keep_signal_handlers):
    c = components(tmp_path, steps=10, nonfinite_from=4)
    with pytest.raises(UserError, match="loss was NaN/inf for 3 optimizer steps in a row at step 6"):
        fit(c)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "loss/total" in line]
    assert [r["step"] for r in logged] == [2, 4] and logged[-1]["train/nonfinite_skipped_steps"] == 1.0
    assert logged[-1]["loss/total"] == pytest.approx(0.6)  # the window holds step 3's finite figures, not the NaN


def test_a_run_whose_every_step_failed_stops_non_zero_and_logs_nan_not_zero(tmp_path, keep_signal_handlers, caplog):
    """3 steps, all NaN, max_nonfinite_steps 10: it used to log `loss 0.0000`, save and export an untrained model."""
    c = components(tmp_path, steps=3, nonfinite_from=1, train={"max_steps": 3, "max_nonfinite_steps": 10})
    with caplog.at_level(logging.INFO, logger="ds_distil.distill.loop"), \
            pytest.raises(UserError, match="loss was NaN/inf for 3 optimizer steps in a row at step 3"):
        fit(c)
    assert c.checkpoints.saved == []  # nothing for an export to take as trained
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if "loss/total" in line]
    assert [r["step"] for r in logged] == [2] and logged[0]["loss/total"] != logged[0]["loss/total"]  # NaN
    assert any(m.startswith("step 2/3 | loss nan | mlm loss nan") for m in caplog.messages)


def test_sigint_stops_at_once_and_lets_go_of_the_data_loader(tmp_path, keep_signal_handlers):
    """Ctrl-C while waiting for a batch: KeyboardInterrupt (the command prints one line, exit 130), after the stream's
    data-loader workers are killed (one stuck in a read would otherwise hold the interpreter's exit)."""
    c = components(tmp_path, steps=10)
    abandoned = []
    c.stream.abandon = lambda: abandoned.append(True)
    c.batches = slow_batches(1, delay_s=60)
    # Python's own SIGINT handler, as a command has it (a test process's disposition may have been changed by another
    # test or a library), and the signal delivered to the main thread, where Python runs it (os.kill may hand it to
    # the timer's thread, which would leave the main thread asleep in its wait)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    main = threading.main_thread().ident
    timer = threading.Timer(0.3, lambda: signal.pthread_kill(main, signal.SIGINT))
    timer.start()
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(c)
    finally:
        timer.join()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - start < 30 and abandoned == [True] and c.state.step == 1
