"""Preemption: SIGTERM / SIGUSR1 stop training cleanly at the end of the current iteration.

Slurm sends SIGUSR1 ``sig_time`` seconds before it reclaims a node when the step is started with
``--signal=USR1@<sig_time>`` (see ``egs2/snac24k/cmd.sh``) and SIGTERM when it cancels or preempts a job.
While :func:`armed` is active (the trainer's training loop), either signal only sets a flag; the
trainer checks it after each iteration (all ranks agree through an all-reduce), writes
``checkpoint.pth``, logs ``Training preempted at ...`` and raises :class:`TrainingPreempted`; the
entry point exits with :data:`EXIT_PREEMPTED` and the recipe asks the user to rerun the same command,
which resumes from that checkpoint.

ESPnet's ``--multiprocessing_distributed`` parent only waits for its training processes: there
:func:`forward_to_children` passes the signals on, so that ``kill -TERM <parent>`` stops them all
cleanly instead of orphaning them.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
from typing import Iterator, Optional

#: Exit status of a preempted training run (BSD's EX_TEMPFAIL: "try again later").
EXIT_PREEMPTED = 75
#: The signals that request a checkpoint-and-stop.
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingPreempted(Exception):
    """Training stopped on SIGTERM/SIGUSR1 after writing ``checkpoint.pth``; rerun to continue."""


class _Flag:
    """The signal that arrived while armed (None: none); per process."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.armed = False


FLAG = _Flag()


def requested() -> bool:
    """True once SIGTERM or SIGUSR1 arrived in this process during training."""
    return FLAG.signum is not None


def signal_name() -> str:
    """The signal this process received, for messages (under DDP the stop may come from another rank)."""
    return signal.Signals(FLAG.signum).name if FLAG.signum is not None else "signal on another rank"


def _on_signal(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    if FLAG.signum is None:
        logging.warning(f"Received {signal.Signals(signum).name}: finishing the current iteration, then "
                        "writing checkpoint.pth and stopping")
    FLAG.signum = signum


@contextlib.contextmanager
def armed() -> Iterator[None]:
    """Within: SIGTERM/SIGUSR1 set the flag instead of killing the process (main thread only;
    elsewhere, e.g. a training loop run from a worker thread, nothing is installed)."""
    try:
        previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    except ValueError:  # not the main thread: signals cannot be handled here
        previous = {}
    FLAG.signum, FLAG.armed = None, True
    try:
        yield
    finally:
        FLAG.armed = False
        for s, handler in previous.items():
            signal.signal(s, handler)


def forward_to_children() -> None:
    """Install handlers that pass SIGTERM/SIGUSR1 on to this process's child processes (ESPnet's
    training workers), or, in a process that has none and is not training, end it as the default
    action would."""

    def handler(signum, frame):
        if FLAG.armed:  # this process trains itself (single process): the trainer's handler decides
            _on_signal(signum, frame)
            return
        children = multiprocessing.active_children()
        for child in children:
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:
                pass
        if not children:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for s in SIGNALS:
        signal.signal(s, handler)
