"""Models shipped inside the package, so that ``vmd solve``, ``vmd sample`` and ``vmd play`` work offline.

Each is one ``model.safetensors`` file as ``vmd train`` writes it (EMA weights, the config
and the step in its header; no pickled code). Provenance: docs/bundled-models.md.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vmd.runtime.errors import CheckpointError

BUNDLED = ("sudoku-vmd", "sudoku-mdm", "shakespeare-block4", "shakespeare-block4-k1", "shakespeare-bd3-block4",
           "shakespeare-ar")
NAMES_HELP = "a run directory, a model .safetensors file or a bundled model (" + ", ".join(BUNDLED) + ")"


def bundled_path(name: str) -> Path:
    if name not in BUNDLED:
        raise CheckpointError(f"no bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    path = Path(str(resources.files(__name__) / f"{name}.safetensors"))
    if not path.is_file():
        raise CheckpointError(f"the bundled model {name} is missing from this install ({path}); "
                              "reinstall vmd, or give a run directory in its place")
    return path


def resolve(source: str | Path) -> Path:
    """Where a model comes from, as every command takes it: a run directory, a model .safetensors
    file, or a bundled name (an existing path of that name wins)."""
    path = Path(source)
    if path.exists():
        return path
    if str(source) in BUNDLED:
        return bundled_path(str(source))
    raise CheckpointError(f"{source} does not exist: give {NAMES_HELP}")
