"""SLURM's warning before a time limit or preemption (SIGUSR1, or SIGTERM) and what our commands do with it.

`distill` and `finetune` finish their step, checkpoint and exit EXIT_PREEMPTED (`StopRequest`, read by the loop); while
distill waits for a batch that does not come (a stuck data loader, a hung file system) it exits EXIT_PREEMPTED without
a checkpoint after a grace period. `teacher-cache` exits EXIT_PREEMPTED at once: its finished files are its
checkpoints (its --resume keeps them). slurm/*.sbatch requeue the job on that status, and the same command continues
(--resume).
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a signal asked us to stop; run the same command again
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
# how long a stop request waits for a batch that is being built before it gives up on it: a healthy data loader
# answers in milliseconds, and SLURM's warning (e.g. --signal=USR1@120) must leave time for the checkpoint after it
DATA_WAIT_GRACE_S = 10.0


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def on_stop_signal(handler) -> None:
    """Call handler(signum) on SIGUSR1/SIGTERM in this process only: forked data-loader workers
    inherit the handler and SLURM signals every process of a task; the main process decides.
    Python may run a second handler call nested inside the first (at any Python function call), so a
    handler tests and sets its state before calling anything."""
    main_pid = os.getpid()

    def dispatch(signum, _frame):
        if os.getpid() == main_pid:
            handler(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, dispatch)


class StopWhileWaiting(Exception):
    """A stop signal came while the process waited for its next input, and no input came within the grace period: the
    work since the last checkpoint is not saved."""


class StopRequest:
    """SIGUSR1/SIGTERM set a flag and do nothing else: the step and any checkpoint being written go on undisturbed,
    however many signals arrive (a SIGKILL mid-write leaves the previous checkpoint as `latest`); the caller reads
    the flag (`stop()`) where it can stop cleanly.

    A wait for input is different, since it may never end: inside `waiting()`, a stop request (one that came
    before the wait or during it) starts a timer of `grace_s`; the input that comes in time is used as usual, and if
    none comes `StopWhileWaiting` is raised out of the wait. More signals change nothing (SLURM and launchers may
    send several): only the timer ends a wait. Main thread only (signals and the timer are delivered there)."""

    def __init__(self, grace_s: float | None = None):
        self.requested, self._waiting, self._timing = False, False, False
        self.grace_s = DATA_WAIT_GRACE_S if grace_s is None else grace_s
        on_stop_signal(self._on_signal)
        self._previous_alarm = signal.signal(signal.SIGALRM, self._on_alarm)

    def __call__(self) -> bool:
        return self.requested

    def _on_signal(self, signum: int) -> None:
        again, self.requested = self.requested, True  # first: a nested call must see it
        if again:
            log.warning("received %s again: already stopping; the checkpoint is written whole first", signal_name(signum))
        else:
            log.warning("received %s: will checkpoint after the current step and stop", signal_name(signum))
        if self._waiting:
            self._arm()

    def _arm(self) -> None:
        """The grace period of this wait, once (a later signal does not extend it)."""
        if not self._timing:
            self._timing = True
            log.warning("waiting for input: stopping once it comes, or in %g s without it", self.grace_s)
            signal.setitimer(signal.ITIMER_REAL, self.grace_s)

    def _on_alarm(self, _signum, _frame) -> None:
        if self._waiting:
            raise StopWhileWaiting(f"no input came within {self.grace_s:g} s of the stop request")

    @contextmanager
    def waiting(self):
        """Around a wait for input that may never end (the next batch)."""
        self._waiting = True
        try:
            if self.requested:  # asked during the last step: this wait gets the grace period, not forever
                self._arm()
            yield
        finally:
            self._waiting = self._timing = False
            signal.setitimer(signal.ITIMER_REAL, 0)

    def close(self) -> None:
        """The process's SIGALRM handler as it was (the stop-signal handler stays: a late signal only sets the flag)."""
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous_alarm)


def exit_on_stop_signal(what: str, kept: str = "without results (it has no checkpoints: the same command redoes it)") -> None:
    """For commands without checkpoints: stop at once with EXIT_PREEMPTED, saying what is `kept` and how to go on. The
    SystemExit unwinds the command (a file being written is removed, not left half-written: core.io.atomic_file)."""

    def stop(signum: int):
        ignore_stop_signals()  # exit 75, not "killed" by the next signal (srun TERMs the other ranks when one exits)
        log.warning("received %s: %s stops now %s; exit %d", signal_name(signum), what, kept, EXIT_PREEMPTED)
        raise SystemExit(EXIT_PREEMPTED)

    on_stop_signal(stop)


def ignore_stop_signals() -> None:
    """Once the work is saved the process only exits. Python restores the default action of handled
    signals while it shuts down, so one more SIGTERM there would turn exit 0/75 into "killed"; an
    ignored signal stays ignored through shutdown."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
