"""How the process's C allocator treats the large blocks that CPU training frees.

Why this exists: glibc's malloc serves every block above its mmap threshold
with a fresh ``mmap`` and hands it back to the kernel on ``free``. The
threshold adapts upwards but stops at 32 MiB on 64-bit systems, and a CPU
training step frees and re-allocates activation blocks larger than that every
step (a batch of 64 images with 64 channels at 64x64 is 64 MiB). Each step then
page-faults those blocks back in, zero-filled by the kernel: a DCGAN 64x64
benchmark on this project's 2-core machine took 2.1-2.7 million minor page faults
and 6-10 s of kernel time per 3 steps. Raising the mmap and trim thresholds
makes malloc keep and reuse the blocks: the same arithmetic, under 0.1 million
faults and near-zero kernel time for the same 3 steps. How much wall-clock time
that saves on that noisy machine is within its run-to-run variation (see the
speed sections of ``docs/gan.md`` and ``docs/vqgan_clip.md``).

The knobs are glibc's documented ``mallopt(3)`` parameters. jemalloc or tcmalloc
by ``LD_PRELOAD`` would do the same, but must be chosen before the process
starts, which a library called from ``bot train`` cannot do. The setting is
process-wide, like ``torch.set_num_threads``; memory the process freed stays
with it (its resident size stays near its peak instead of falling between
steps), which is the point.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import platform

log = logging.getLogger(__name__)

# mallopt(3) parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MIB = 1 << 20
#: glibc's own steady state for a long-running process: the adaptive mmap
#: threshold's ceiling on 64-bit systems, and twice that for trimming.
GLIBC_STEADY_STATE = (32 * MIB, 64 * MIB)
#: Keep blocks up to 1 GiB in the heap; give memory back only above 2 GiB free at the top.
REUSE = (1024 * MIB, 2048 * MIB)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (mallopt's parameters differ elsewhere), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def set_malloc_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's mmap and trim thresholds in bytes; False where the C library is
    not glibc or refused a value (nothing is changed then beyond what it accepted)."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(libc.mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))


def reuse_freed_memory() -> bool:
    """Make malloc keep large freed blocks for the next step (see the module's
    docstring). Returns whether the setting took effect; a no-op off glibc."""
    applied = set_malloc_thresholds(*REUSE)
    log.debug("malloc keeps freed blocks up to %d MiB: %s", REUSE[0] // MIB, applied)
    return applied
