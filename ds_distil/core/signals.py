"""SLURM's warning before a time limit or preemption (SIGUSR1, or SIGTERM) and what our commands do with it.

`distill` finishes its step, checkpoints and exits EXIT_PREEMPTED (its handler is in the trainer);
`finetune` has no checkpoints and exits EXIT_PREEMPTED at once. slurm/*.sbatch requeue the job on
that status, and the same command continues (distill --resume) or redoes the work (finetune).
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a signal asked us to stop; run the same command again
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


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


def exit_on_stop_signal(what: str) -> None:
    """For commands without checkpoints: stop at once with EXIT_PREEMPTED."""

    def stop(signum: int):
        ignore_stop_signals()  # exit 75, not "killed" by the next signal (srun TERMs the other ranks when one exits)
        log.warning("received %s: %s stops now without results (it has no checkpoints: the same command redoes it); exit %d",
                    signal_name(signum), what, EXIT_PREEMPTED)
        raise SystemExit(EXIT_PREEMPTED)

    on_stop_signal(stop)


def ignore_stop_signals() -> None:
    """Once the work is saved the process only exits. Python restores the default action of handled
    signals while it shuts down, so one more SIGTERM there would turn exit 0/75 into "killed"; an
    ignored signal stays ignored through shutdown."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
