"""One writer per run directory: ``vmd train`` holds an exclusive lock on ``RUN/.lock`` while it
writes the run, so a second ``vmd train --out RUN`` or ``--resume RUN`` is refused instead of
overwriting the first's checkpoints. The lock is the operating system's (``flock``): it dies
with the process that holds it, so a killed run never blocks its own resume. Readers (``eval``,
``sample``) take no lock. On a system without ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmd.runtime.errors import CheckpointError

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def os_reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def ensure_run_dir(run_dir: Path) -> Path:
    """Create ``run_dir`` (and its parents), or say in one line why it cannot be one."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is a file, not a run directory; choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create run directory {run_dir}: {os_reason(e)}") from None
    return run_dir


class RunLock:
    """The exclusive writer lock of one run directory, held until ``release`` or process exit."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        try:
            self._file = open(self.path, "a+")
        except OSError as e:
            raise CheckpointError(f"cannot write to run directory {run_dir}: {os_reason(e)}") from None
        if fcntl is None:
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise CheckpointError(f"{run_dir} is being written by another vmd train (pid {holder}); wait for it to "
                                  "finish or stop it, or choose another --out") from None
        except OSError as e:  # a file system without locks: say so rather than run unguarded
            self._file.close()
            raise CheckpointError(f"cannot lock run directory {run_dir}: {os_reason(e)}") from None
        try:
            self._file.seek(0)
            self._file.truncate()
            self._file.write(str(os.getpid()))
            self._file.flush()
        except OSError as e:
            self.release()
            raise CheckpointError(f"cannot write to run directory {run_dir}: {os_reason(e)}") from None

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing the file releases the flock
