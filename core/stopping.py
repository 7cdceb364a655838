"""Stop training on SIGINT (Ctrl-C) or SIGTERM (Slurm preemption, `kill`) without losing work.

While `StopSignals` is active the first signal only raises a flag; the trainer checks it after each step,
writes a checkpoint and raises `TrainingStopped`, a SystemExit whose status is the shell's convention for a
process ended by that signal (128 + number: 130 for SIGINT, 143 for SIGTERM), so no traceback is printed
and a job scheduler still sees why the run ended. A second Ctrl-C stops at once, as it would without us; a
repeated SIGTERM is not a second request (Slurm signals every process and `torchrun` forwards it again).
"""

from __future__ import annotations

import functools
import signal
import threading
from pathlib import Path

import torch

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(SystemExit):
    """Training stopped by a signal after writing a checkpoint; exit status 128 + the signal number."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        super().__init__(128 + signum)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    def __str__(self) -> str:
        return (f"stopped by {signal.Signals(self.signum).name} at step {self.step}; newest checkpoint "
                f"{self.checkpoint or 'none'}: rerun the same command to resume")


class StopSignals:
    """Context manager: SIGINT/SIGTERM set `signum` instead of ending the process (main thread only)."""

    def __init__(self):
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # signal.signal works only there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the previous handlers back (idempotent)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum and signum == signal.SIGINT:  # Ctrl-C again: the user insists, stop now
            self.restore()
            signal.raise_signal(signum)
            return
        self.signum = self.signum or signum

    def requested(self, acc) -> int:
        """The signal number if any process received one, else 0; a collective under several processes,
        so every process stops after the same step (the checkpoint is written by all of them)."""
        if acc.num_processes == 1:
            return self.signum
        flag = torch.tensor([self.signum], device=acc.device)
        return int(acc.reduce(flag, reduction="max").item())


def stops_on_signals(fit):
    """Decorate a trainer's `fit`: `self.signals` is a StopSignals active for the call."""
    @functools.wraps(fit)
    def wrapper(trainer, *args, **kwargs):
        with StopSignals() as trainer.signals:
            return fit(trainer, *args, **kwargs)
    return wrapper
