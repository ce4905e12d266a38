"""How the C allocator treats the model's freed activations: an application's choice, offered here.

torch's CPU tensors come from the C library's malloc. glibc returns large freed blocks to the
system (a block over its mmap threshold is unmapped; a heap whose free top grows past the trim
threshold is shrunk), so the next tensor of that size faults its pages in again, 4 KiB at a
time, zeroed. Solving Sudoku allocates and frees activations of 1-8 MiB many times per step;
whether glibc's adaptive thresholds have settled high enough varies from process to process,
and with batches solved side by side each worker thread gets an arena of its own, shrunk the
same way. On the 2-core Xeon (bundled models, 256 easy puzzles, NFE 10, docs/sudoku-history.md)
a solve took 0 to 330,000 page faults, and the runs that had many were up to 17% slower.

``keep_freed_memory`` fixes both thresholds high, so freed blocks stay mapped for reuse: a
process then holds on to about its peak memory. It changes the whole process, so the library
never calls it; the ``vmd`` command and the benchmarks do, at start. A user's own glibc malloc
settings (``MALLOC_*`` variables, ``glibc.malloc`` tunables) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
MMAP_THRESHOLD = 32 << 20  # blocks below this come from the heap, not from their own mapping
TRIM_THRESHOLD = 256 << 20  # free memory a heap may keep at its top before it is shrunk
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")


def keep_freed_memory() -> bool:
    """On Linux with glibc, keep freed blocks under 32 MiB mapped (and up to 256 MiB free at a
    heap's top) for reuse. Returns whether the settings were applied: not on other systems or C
    libraries, nor where the user has set glibc's malloc options."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mmap_set = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    trim_set = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))  # set even if the first was refused
    return mmap_set and trim_set
