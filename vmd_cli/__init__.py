"""Command line and terminal UI for vmd."""

import os

# Under torchrun, c10d's C++ logger prints each failed connection attempt with a native stack
# trace; the Python error that follows says the same in one line (vmd/distributed.py). Set
# TORCH_CPP_LOG_LEVEL yourself (e.g. INFO) to see them. Read when torch loads, so set here.
if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
