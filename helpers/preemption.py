"""Stop a training run cleanly when a job scheduler asks, and resume it later (lesson 09).

A cluster or a cloud stops a job by sending it a signal, then waits a little before it kills the
process for good: SLURM sends ``SIGTERM`` at the time limit (and ``SIGUSR1`` a chosen time before
it with ``sbatch --signal=USR1@120``), Kubernetes sends ``SIGTERM`` to a pod it evicts or
preempts. The safe pattern:

- a signal handler that **only records** the signal (:class:`StopFlag`): no saving, no exiting
  inside the handler, which can run in the middle of any line of the training step;
- the training loop checks the flag at a **step boundary**, saves a complete checkpoint
  atomically (:func:`helpers.checkpointing.atomic_save`) and exits;
- the exit code says "stopped by a signal, run me again": :func:`exit_code_for` returns
  ``128 + signal number`` (143 for ``SIGTERM``), never 0, which a scheduler reads as "finished";
- with several processes (``torchrun``), one process may get the signal and the others not:
  :func:`agree_on_signal` combines the ranks' signals with ``all_reduce`` so that every rank stops
  after the same step.

:class:`CountingDataset` counts how many samples a ``DataLoader`` really loads, including in
its worker processes, to measure what skipping batches by hand costs.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Iterable
from typing import Any

import torch

__all__ = [
    "PREEMPTION_SIGNALS", "StopFlag", "exit_code_for", "agree_on_signal", "ignore_stop_signals", "CountingDataset",
]

PREEMPTION_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)
)
"""The signals :class:`StopFlag` handles by default: ``SIGTERM`` and (not on Windows) ``SIGUSR1``."""


def exit_code_for(signum: int | None) -> int:
    """The exit code for a run that saved and stopped because of signal ``signum``: ``128 + signum``.

    That is the code a shell and Kubernetes report for a process ended by that signal (143 for
    ``SIGTERM``, 138 for ``SIGUSR1`` on Linux), so rules written for "killed by SIGTERM"
    (SLURM's ``RequeueExit=143`` in ``slurm.conf``, a Kubernetes Job's ``podFailurePolicy``
    ``onExitCodes``, ``torchrun --max-restarts``) treat the clean stop as a stop to retry.
    It is never 0: exit code 0 means "the job is finished", and nobody would run it again.
    ``None`` (no signal) returns 0.
    """
    if signum is None:
        return 0
    signum = int(signum)
    if not 0 < signum < 128:
        raise ValueError(f"signum must be a signal number between 1 and 127, got {signum}.")
    return 128 + signum


class StopFlag:
    """Handlers for ``SIGTERM`` and ``SIGUSR1`` that only record that a stop was asked for.

    Use it as a context manager around the training loop::

        with StopFlag() as stop:
            for step in range(start, total_steps):
                train_step(...)
                if stop.requested:          # checked at a step boundary
                    atomic_save(checkpoint, path)
                    sys.exit(exit_code_for(stop.signal))

    On entry it installs its handler for each signal in ``signals`` (default
    :data:`PREEMPTION_SIGNALS`); on exit it puts the previous handlers back, so a notebook kernel
    or a test process is left as it was. ``requested`` becomes True when one of the signals
    arrives; ``signal`` is the first one that arrived (later ones are counted in ``count``).
    Signal handlers can only be installed from the main thread: anywhere else this raises a
    ``RuntimeError`` that says so.
    """

    def __init__(self, signals: Iterable[int] = PREEMPTION_SIGNALS) -> None:
        self.signals = tuple(int(s) for s in signals)
        if not self.signals:
            raise ValueError("StopFlag needs at least one signal to handle.")
        self.signal: int | None = None
        self.count = 0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """True once one of the signals has arrived."""
        return self.signal is not None

    @property
    def signal_name(self) -> str | None:
        """The name of the signal that arrived (e.g. ``"SIGTERM"``), or None."""
        return None if self.signal is None else signal.Signals(self.signal).name

    def _handle(self, signum: int, frame: Any) -> None:
        # Only record: the training step in progress finishes, and the loop saves at its end.
        if self.signal is None:
            self.signal = signum
        self.count += 1

    def install(self) -> StopFlag:
        """Install the handlers (remembering the previous ones); returns ``self``."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "StopFlag must be installed from the main thread: Python runs signal handlers "
                "only there. Install it in the training script's main code, not in a worker thread."
            )
        for signum in self.signals:
            if signum not in self._previous:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Put the previous handlers back (harmless when not installed)."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> StopFlag:
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    def __repr__(self) -> str:
        names = ", ".join(signal.Signals(s).name for s in self.signals)
        return f"StopFlag({names}; requested={self.requested}, signal={self.signal_name})"


def agree_on_signal(signum: int | None) -> int | None:
    """The stop signal agreed by all processes: the highest signal number any rank received, or None.

    Pass ``stop.signal`` (None when this rank got no signal). With ``torch.distributed``
    initialised it ``all_reduce``-s the number with ``MAX`` (so every rank must call it at the
    same step, like any collective); without it, it returns ``signum``. Call it at each step
    boundary: when one rank got ``SIGTERM``, every rank learns it after the same step, saves one
    consistent checkpoint and exits with the same code (:func:`exit_code_for`).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None if signum is None else int(signum)
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    flag = torch.tensor([0 if signum is None else int(signum)], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    agreed = int(flag.item())
    return agreed or None


class CountingDataset(torch.utils.data.Dataset):
    """Wraps a map-style dataset and counts every ``__getitem__``, in worker processes too.

    ``loaded`` is the number of samples loaded so far (a shared counter, so samples loaded by
    ``DataLoader`` workers count); ``reset()`` sets it back to 0.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self._loaded = multiprocessing.get_context().Value("q", 0)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        with self._loaded.get_lock():
            self._loaded.value += 1
        return self.dataset[index]

    @property
    def loaded(self) -> int:
        """How many samples were loaded since the start (or the last ``reset()``)."""
        return int(self._loaded.value)

    def reset(self) -> None:
        """Set the count back to 0."""
        with self._loaded.get_lock():
            self._loaded.value = 0


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """A ``worker_init_fn`` for DataLoader workers: ignore :data:`PREEMPTION_SIGNALS` in the worker.

    A scheduler may signal **every** process of a job, not only the main one (SLURM signals all
    processes of a job step; ``kill -TERM -<pgid>`` signals a whole process group). A
    DataLoader worker dies of ``SIGTERM`` by default, and the main process then fails with
    "DataLoader worker (pid ...) is killed by signal: Terminated" before it can save. With
    this, workers ignore those signals; the main process records the signal, finishes the
    step, saves, and shuts its workers down itself. ``worker_id`` is ignored (it is there so
    the function fits ``worker_init_fn``).
    """
    for signum in PREEMPTION_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
