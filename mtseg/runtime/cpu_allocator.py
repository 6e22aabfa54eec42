"""Keep freed CPU memory for reuse, so that large tensors do not page-fault on every step.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and hands it back with ``munmap`` when freed. A training step of the paper's network
allocates and frees tensors of tens to hundreds of MiB (each layer's activations over a
mini-batch of context slices), so every step the kernel maps, zeroes and faults in all of
them again: on a 2-core Xeon (docs/CHANGELOG.md) that was 0.2–0.8 million page faults and about a
third of every cube training step at the demo's settings. :func:`reuse_freed_memory` tells
glibc to take all memory from its heap (``M_MMAP_MAX = 0``) and not to give freed memory back
to the system (``M_TRIM_THRESHOLD``), so from the second step on a step reuses the pages of
the previous ones (no page faults; tested). The price is memory: freed blocks stay with the
process, so its peak RSS is higher (a cube step at the demo's settings: 2.3 GiB with glibc's
defaults, 2.6–3.2 GiB kept; docs/CHANGELOG.md), and it is returned only when the process
ends.

Training turns it on when its steps start (``mtseg.training.callbacks.KeepFreedMemory``), after the
data module has prepared its volumes, so preprocessing's temporaries are returned as usual;
``mtseg.bench`` turns it on for its training measurements. Inference (``evaluate``,
``predict``, the Python API) leaves glibc's defaults alone. ``MTSEG_KEEP_FREED_MEMORY=0``
keeps glibc's defaults in training too. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: Freed heap memory kept before glibc trims it (the largest ``int``): in effect, never.
KEEP_ALL = 2**31 - 1
#: Environment variable that turns the setting off (``0``).
ENV_SWITCH = "MTSEG_KEEP_FREED_MEMORY"


@functools.cache
def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (once per process); ``True`` when it took effect."""
    if os.environ.get(ENV_SWITCH, "1").strip() in ("0", "false", "no", "off"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl and macOS have other allocators
    except (OSError, AttributeError):
        return False
    done = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL) == 1
    if not done:
        log.warning("glibc refused the malloc settings that keep freed memory; steps may run slower")
    return done
