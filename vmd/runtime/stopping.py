"""Stopping a run cleanly: signals end the current step, never cut one in half."""

from __future__ import annotations

import signal
import threading
from pathlib import Path


class TrainingInterrupted(Exception):
    """Training stopped on a signal after a whole step, with a checkpoint of that step saved."""

    def __init__(self, step: int, run_dir: Path, signum: int = signal.SIGINT):
        super().__init__(f"{signal.Signals(signum).name} at step {step}; checkpoint saved in {run_dir}")
        self.step, self.run_dir, self.signum = step, run_dir, signum

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by the signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum


class StopSignals:
    """While active (in the main thread), SIGINT and SIGTERM do not interrupt: they are recorded in
    ``signum`` and the loop stops at the next step boundary. A step is never cut in half and a
    checkpoint never half written, so an interrupted run resumes bitwise like an uninterrupted one."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _record(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:  # e.g. SIGINT under nohup stays ignored
                    self._previous[s] = signal.signal(s, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
