"""Binarized, memory-mapped token datasets: ``PREFIX.bin`` (tokens) + ``PREFIX.idx`` (index).

Index layout (little endian): magic ``NMTSDIX1`` | dtype code (u8) | count (u64) |
sizes (i32 x count) | offsets (i64 x count+1). Tokens are uint16 when the
vocabulary fits, else int32.
"""

import os
import struct
from typing import List

import numpy as np

from nmt_sd.errors import NmtSdError

MAGIC = b"NMTSDIX1"
DTYPES = {1: np.uint16, 2: np.int32}


def best_dtype(vocab_size: int):
    return np.uint16 if vocab_size < 65500 else np.int32


def write_indexed(prefix: str, arrays: List[np.ndarray], vocab_size: int) -> None:
    """Write ``arrays`` (1-D token id arrays) atomically as PREFIX.bin/.idx."""
    dtype = best_dtype(vocab_size)
    code = 1 if dtype == np.uint16 else 2
    sizes = np.asarray([len(a) for a in arrays], dtype=np.int32)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    flat = np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)
    for ext, write in (
        (".bin", lambda f: f.write(flat.tobytes())),
        (
            ".idx",
            lambda f: (
                f.write(MAGIC + struct.pack("<BQ", code, len(arrays))),
                f.write(sizes.tobytes()),
                f.write(offsets.tobytes()),
            ),
        ),
    ):
        tmp = prefix + ext + ".tmp"
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, prefix + ext)


class IndexedDataset:
    """Random access to the token arrays of a binarized split (memory-mapped)."""

    def __init__(self, prefix: str):
        idx_path, bin_path = prefix + ".idx", prefix + ".bin"
        for p in (idx_path, bin_path):
            if not os.path.isfile(p):
                raise NmtSdError(f"binarized data not found: {p}")
        with open(idx_path, "rb") as f:
            head = f.read(len(MAGIC) + 9)
            if len(head) < len(MAGIC) + 9 or head[: len(MAGIC)] != MAGIC:
                raise NmtSdError(f"not an nmt-sd index file: {idx_path}")
            code, count = struct.unpack("<BQ", head[len(MAGIC) :])
            if code not in DTYPES:
                raise NmtSdError(f"corrupt index file (dtype code {code}): {idx_path}")
            self.sizes = np.frombuffer(f.read(4 * count), dtype=np.int32).copy()
            self.offsets = np.frombuffer(f.read(8 * (count + 1)), dtype=np.int64).copy()
        if len(self.sizes) != count or len(self.offsets) != count + 1:
            raise NmtSdError(f"truncated index file: {idx_path}")
        dtype = DTYPES[code]
        nbytes = os.path.getsize(bin_path)
        if nbytes != self.offsets[-1] * np.dtype(dtype).itemsize:
            raise NmtSdError(
                f"{bin_path} does not match its index {idx_path} (truncated?)"
            )
        self.tokens = (
            np.memmap(bin_path, dtype=dtype, mode="r") if nbytes else np.zeros(0, dtype)
        )

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(
            self.tokens[self.offsets[i] : self.offsets[i + 1]], dtype=np.int64
        )


def dataset_exists(prefix: str) -> bool:
    return os.path.isfile(prefix + ".idx") and os.path.isfile(prefix + ".bin")
