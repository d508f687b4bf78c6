"""The C allocator's settings for this process (glibc only).

Scoring decodes every posterior sample of a batch at once: tensors of tens to hundreds of MB,
allocated and freed many times a second. glibc serves blocks that large with a fresh ``mmap``
each time and gives them back on ``free``, so every use faults in (and zeroes) its pages again;
on the 2-core machines that was a fifth of `convvae score`'s time. Serving every block from the
heap and never trimming it scores 25-30% more images per second (fused and ``excess_nll`` at
the default 8 samples, measured in separate processes, docs/speed.md); training, whose tensors
are small, does not change. The cost: memory freed after a peak stays with the process (its
resident size stays at the peak, which it reached anyway). ``CONVVAE_MALLOC=system`` keeps
glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import platform

OPT_OUT_ENV = "CONVVAE_MALLOC"
# mallopt parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never return freed memory to the system, unless
    CONVVAE_MALLOC=system or the C library is not glibc; returns whether it applied."""
    if os.environ.get(OPT_OUT_ENV, "") == "system" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # mallopt returns 1 on success; the largest int means "never trim".
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1


def give_back_freed_memory() -> bool:
    """Return the heap's free memory to the system now (glibc's ``malloc_trim``): a server
    calls it after a large request, so its resident size falls back instead of staying at the
    peak that ``keep_freed_memory`` holds. Returns whether anything was given back."""
    if platform.libc_ver()[0] != "glibc":
        return False
    return ctypes.CDLL(None).malloc_trim(0) == 1
