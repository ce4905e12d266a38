"""vmd: masked diffusion (MDM) and variational masked diffusion (VMD) on discrete data."""

__version__ = "0.1.0"
