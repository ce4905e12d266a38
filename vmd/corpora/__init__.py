"""Corpora shipped inside the package, so that the text presets run from any install, offline.

``tinyshakespeare``: Andrej Karpathy's char-rnn collection of Shakespeare's plays (public domain),
1,115,394 characters. A preset names it as ``task.file: tinyshakespeare``; its SHA-256 is checked
before it is used, so a damaged install is one line, not a model trained on other text.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from vmd.runtime.errors import DataError

# name -> (file, sha256)
BUNDLED = {"tinyshakespeare": ("tinyshakespeare.txt",
                               "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")}
_CHECKED: set[str] = set()


def bundled_corpus(name: str) -> Path | None:
    """The packaged file of the corpus ``name`` (also matched by its file name, as configs written
    before it shipped named it, e.g. ``../shared/data/tinyshakespeare.txt``), checked; None if
    ``name`` is none of them."""
    key = next((k for k, (file, _) in BUNDLED.items() if name in (k, file) or Path(name).name == file), None)
    if key is None:
        return None
    file, sha = BUNDLED[key]
    path = Path(str(resources.files(__name__) / file))
    if key not in _CHECKED:
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as e:
            raise DataError(f"the bundled corpus {key} is missing from this install ({path}: {e.strerror or e}); "
                            "reinstall vmd") from None
        if digest != sha:
            raise DataError(f"the bundled corpus {key} ({path}) is damaged (its SHA-256 differs); reinstall vmd")
        _CHECKED.add(key)
    return path
