"""The user's data cache: where made or downloaded data sets live between runs.

``VMD_CACHE_DIR`` overrides the platform's user cache directory (``platformdirs``). Every writer
checks its folder first (:func:`check_writable`), so an unusable cache is one DataError line
before any work, not minutes of lost work.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vmd.errors import DataError

CACHE_HINT = "set VMD_CACHE_DIR to a writable directory"


def cache_dir() -> Path:
    env = os.environ.get("VMD_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("vmd"))


def check_writable(root: Path, folder: Path) -> None:
    """A DataError before any work if ``folder`` (under the cache ``root``) cannot take a new file."""
    if root.exists() and not root.is_dir():
        raise DataError(f"the data cache {root} is not a directory; {CACHE_HINT}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise DataError(f"the data cache {folder} is not writable ({e.strerror or e}); {CACHE_HINT}") from None
