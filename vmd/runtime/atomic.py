"""Files written whole or not at all: a write goes to a temporary name beside the file, is
flushed and renamed over it, so an interrupted write leaves the previous file whole; and the
temporary files that only a killed process (kill -9, a power cut) can leave behind are cleaned.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

_TEMP = re.compile(r"\..+\.tmp-(\d+)")  # atomic_write's temporary names


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, flush and rename it over ``path``. On any
    failure (a full disk, Ctrl-C) the temporary file is removed before the error goes on: a leftover
    would take the space the next write needs."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill would end the process: keep its files
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OSError, OverflowError):
        return False
    return True


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of our temporary files (``.NAME.tmp-PID``), which a killed write leaves."""
    return _TEMP.fullmatch(name) is not None


def clean_stale_temps(run_dir: Path, locked: bool = False) -> list[Path]:
    """Remove the temporary files (``.NAME.tmp-PID``) that a killed write left in ``run_dir``;
    returns them. By default only those whose process is gone (another process may be writing
    one now). A caller holding the run's writer lock passes ``locked=True``: then no one else
    writes there and all of them go, also a dead writer's whose PID a new process has taken."""
    removed = []
    with contextlib.suppress(OSError):
        for p in Path(run_dir).iterdir():
            m = _TEMP.fullmatch(p.name)
            if m and p.is_file() and (locked or not _alive(int(m[1]))):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed
