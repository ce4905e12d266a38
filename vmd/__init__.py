"""vmd: masked diffusion (MDM) and variational masked diffusion (VMD) on discrete data."""

__version__ = "0.1.0"

from vmd.runtime.errors import CheckpointError, ConfigError, DataError, TrainingDiverged, VmdError  # noqa: E402,F401
