"""glibc malloc settings for training on CPU (``--cpu-allocator``).

PyTorch's CPU tensors come from the C library's malloc. With glibc's defaults, a block of
32 MB or more (the logits of a 2,048-token batch over an 8k vocabulary are 33 MB in
bfloat16) is mapped fresh from the kernel on every allocation and unmapped when freed, and
memory freed at the top of the heap is handed back once it exceeds the trim threshold. A
training step allocates and frees the same large tensors every update, so each of them
page-faults in again, every step. ``retain`` tells glibc to serve every block from the
heap and never trim it: the memory freed by one step is reused, resident, by the next.
The cost is that the process keeps its peak heap (what a training run needs anyway).

Measured in docs/benchmarks.md: R-Drop's step -10% and Intra-Distillation's (K=3) -8.5%
on one thread, the baseline's about the same.
"""

import ctypes
import ctypes.util
import logging

logger = logging.getLogger("nmt_sd.train")

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
INT_MAX = 2**31 - 1


def _glibc():
    """The process's C library if it is glibc (it has mallopt), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse: no mmap'd blocks, no trimming.

    Returns True when the settings took effect (glibc), False elsewhere (musl, macOS):
    there the allocator is left as it is.
    """
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1 and ok
    return ok


def setup_cpu_allocator(mode: str, device_type: str) -> None:
    """Apply ``--cpu-allocator MODE`` for a run on ``device_type`` ("cpu" or "cuda")."""
    if mode != "retain" or device_type != "cpu":
        return
    if retain_freed_memory():
        logger.info(
            "cpu allocator: glibc keeps freed memory (no per-step page faults; --cpu-allocator system to undo)"
        )
    else:
        logger.info("cpu allocator: not glibc, left as it is")
