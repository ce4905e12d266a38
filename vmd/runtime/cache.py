"""The user's data cache: where made or downloaded data sets live between runs.

``VMD_CACHE_DIR`` overrides the platform's user cache directory (``platformdirs``). Every writer
checks its folder first (:func:`check_writable`), so an unusable cache is one DataError line
before any work, not minutes of lost work.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vmd.runtime.atomic import atomic_write
from vmd.runtime.errors import DataError

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


def digest(tensors: dict) -> str:
    """sha256 of the tensors' bytes, in the dict's order: the checksum a cached file carries."""
    import hashlib

    h = hashlib.sha256()
    for t in tensors.values():
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def read_checked(path: Path, settings: dict[str, str], shapes: dict, check=None):
    """The tensors of a cached safetensors file, or the reason it cannot be used: unreadable, other
    ``settings`` in its metadata, a tensor not of ``shapes`` (name -> (shape, dtype)), a checksum
    that does not match, or what ``check(tensors)`` says is wrong (None: nothing). Nothing in the
    file is executed: safetensors holds tensors and strings only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in shapes}
    except Exception as e:  # noqa: BLE001 - any failure to read is a corrupt cache
        return f"unreadable ({type(e).__name__})"
    if any(meta.get(k) != v for k, v in settings.items()):
        return "its settings do not match"
    if any(tuple(tensors[n].shape) != tuple(shape) or tensors[n].dtype != dtype for n, (shape, dtype) in shapes.items()):
        return "wrong shape or type"
    if meta.get("sha256") != digest(tensors):
        return "checksum mismatch"
    return (check(tensors) if check else None) or tensors


def write_checked(path: Path, tensors: dict, settings: dict[str, str]) -> None:
    """Write ``tensors`` atomically with ``settings`` and their checksum in the metadata; a failed
    write is one DataError line."""
    from safetensors.torch import save

    try:
        atomic_write(path, save(tensors, metadata={**settings, "sha256": digest(tensors)}))
    except OSError as e:
        raise DataError(f"could not write the data cache {path} ({e.strerror or e}); {CACHE_HINT}") from None
