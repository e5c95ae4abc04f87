"""Keep freed CPU tensor memory for reuse while training (Linux with glibc).

glibc's ``malloc`` serves every request above 32 MiB (and, in a thread other than the main
one, above 64 MiB) with a fresh ``mmap`` and gives it back with ``munmap`` when it is freed.
A training step on the CPU allocates and frees such feature maps and gradients by the dozen
(batch 16 at 256x256, 16 channels in bf16: 32 MiB each), and the kernel then zeroes every
page of every one of them again on first touch, which costs more than the arithmetic on
them. :func:`cpu_allocation_cache` turns that off for as long as training runs: freed
memory stays in the heap and the next step reuses it, for somewhat more peak memory (freed
blocks of different sizes are reused less tightly than fresh mappings). A worker thread's
arena still maps blocks above 64 MiB afresh, so the gain there is smaller; the figures are in
docs/benchmarks.md ("Training and prediction speed").
On leaving, the held memory is handed back to the system (``malloc_trim``).

Nothing is changed where the C library is not glibc, or where the user has tuned ``malloc``
through ``MALLOC_*`` or ``GLIBC_TUNABLES`` environment variables or replaced it with
``LD_PRELOAD``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
# What training leaves behind. glibc raises its mmap threshold by itself as mapped blocks are
# freed (up to 32 MiB, the trim threshold following at twice that), but any mallopt call
# turns that off for good: restoring the start-up values (128 KiB) would then map every
# tensor above 128 KiB afresh for the rest of the process, which doubles the time of an add
# into a new 16 MiB tensor. So the values that the dynamic rule reaches in a torch process are
# set instead.
RESTORE_MMAP_THRESHOLD = 32 * 1024 * 1024
RESTORE_TRIM_THRESHOLD = 2 * RESTORE_MMAP_THRESHOLD
DEFAULT_MMAP_MAX = 65536
HOLD_TRIM_THRESHOLD = 2**31 - 1  # (an int) never shrink the heap while training


def _tuned_by_environment() -> bool:
    """``GLIBC_TUNABLES``, a ``MALLOC_*`` variable, or a preloaded library (jemalloc, tcmalloc)."""
    return any(k == "GLIBC_TUNABLES" or k == "LD_PRELOAD" or k.startswith("MALLOC_") for k in os.environ)


@functools.cache
def _glibc():
    """The process's glibc, or ``None`` (another C library, or ``malloc`` tuned or replaced
    through the environment)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    if _tuned_by_environment():
        log.debug("malloc is tuned by the environment; leaving it as it is.")
        return None
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return lib


# The setting is process-wide, so trainings running at once share it: the first to enter
# sets it, the last to leave restores it.
_lock = threading.Lock()
_users = 0


@contextmanager
def cpu_allocation_cache(enabled: bool = True) -> Iterator[bool]:
    """While inside, freed large CPU allocations stay in the process for reuse.

    Re-entrant and safe for concurrent trainings (the setting is process-wide: the last one
    to leave restores glibc's settings and returns the held memory to the system).

    Args:
        enabled: ``False`` makes this a no-op (e.g. training on a GPU).

    Yields:
        whether the cache is active (``False`` where the C library is not glibc, or ``malloc``
        was tuned through the environment).
    """
    global _users
    lib = _glibc() if enabled else None
    if lib is None:
        yield False
        return
    with _lock:
        _users += 1
        if _users == 1:
            lib.mallopt(M_TRIM_THRESHOLD, HOLD_TRIM_THRESHOLD)
            lib.mallopt(M_MMAP_MAX, 0)
    try:
        yield True
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                lib.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                lib.mallopt(M_MMAP_THRESHOLD, RESTORE_MMAP_THRESHOLD)
                lib.mallopt(M_TRIM_THRESHOLD, RESTORE_TRIM_THRESHOLD)
                lib.malloc_trim(0)
