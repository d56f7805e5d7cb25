"""Keep freed memory in the process heap. With glibc's defaults a free that leaves more than about twice the largest
recent block free at the top of the heap gives it back to the kernel, so a stage that makes a few frame-sized arrays
per frame faults the same pages in again on every frame (measured in the decoder process on a 640x480 video: 115-128
minor faults and 0.3 ms of kernel time per frame, gone with these settings)."""
from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MB come from the heap, not from their own mapping
TRIM_THRESHOLD = 64 << 20  # the free top of the heap goes back to the kernel beyond 64 MB only


def hold_freed_memory() -> bool:
    """Process-wide, for the pipeline's processes (a frame loop's working set stays resident instead of being
    returned and faulted in again). False where the C library is not glibc, which is left as it is."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    held = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if held:
        log.debug("freed memory stays in the heap up to %d MB", TRIM_THRESHOLD >> 20)
    return held
