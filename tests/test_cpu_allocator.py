"""--cpu-allocator retain: glibc serves large tensors from the heap instead of fresh mmaps."""

import json
import subprocess
import sys

import pytest

from nmt_sd.training.cpu_allocator import _glibc

# Allocate a 48 MB tensor (above glibc's largest mmap threshold, 32 MB) and report how many
# bytes of mmap'd blocks that added (mallinfo2's hblkhd). Run in a fresh process: mallopt
# settings last for the life of the process.
PROBE = """
import ctypes, json, sys, torch
from nmt_sd.training.cpu_allocator import setup_cpu_allocator
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
setup_cpu_allocator(sys.argv[1], sys.argv[2])
before = libc.mallinfo2().hblkhd
x = torch.ones(12 * 2**20)  # 48 MB
print(json.dumps({"mmapped": libc.mallinfo2().hblkhd - before}))
"""

needs_glibc = pytest.mark.skipif(
    _glibc() is None or not hasattr(_glibc(), "mallinfo2"),
    reason="needs glibc >= 2.33 (mallopt, mallinfo2)",
)


def mmapped_bytes(mode: str, device_type: str = "cpu") -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, device_type],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["mmapped"]


@needs_glibc
def test_retain_serves_large_tensors_from_the_heap():
    # glibc's default: a fresh mapping, faulted in page by page
    assert mmapped_bytes("system") >= 48 * 2**20
    assert mmapped_bytes("retain") == 0


@needs_glibc
def test_retain_is_only_applied_to_cpu_runs():
    assert mmapped_bytes("retain", "cuda") >= 48 * 2**20
