"""Keep freed tensor memory for reuse instead of handing it back to the kernel (glibc only).

glibc's malloc serves every block above 32 MB (a ResNet50 activation at 224 px is one) with its
own mmap and returns it with munmap on free. A CPU training step allocates and frees those blocks
again each step, so every step pays page faults for fresh zeroed memory. With mmap off and a
high trim threshold, freed blocks stay in the heap and the next step reuses them: what jemalloc
or tcmalloc achieve when preloaded, with nothing installed. Numbers are unchanged: only where the
memory comes from differs. Measured speed-up and memory cost: docs/performance.md
(python -m benchmarks.bench_malloc).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
TRIM_THRESHOLD_BYTES = 1 << 30  # at most this much freed memory is kept above the heap's top
OPT_OUT = "IMAGECLF_MALLOC"  # set to "default" to leave glibc's malloc as it is

log = logging.getLogger("imageclf")


def keep_freed_memory() -> bool:
    """Tune glibc's malloc of this process (and of the workers it forks later); True if done."""
    if os.environ.get(OPT_OUT, "") == "default":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success; with another allocator preloaded it is harmless and ineffective
    done = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    if done:
        log.info("malloc: freed memory kept for reuse (glibc mmap off; %s=default to opt out)", OPT_OUT)
    return done
