"""Resumable long decoding jobs (``nmt-sd-seqkd``): finished sentences are saved in parts, so an
interrupted job decodes only what is left when it is run again.

A parts directory holds ``meta.json`` (the settings the parts were made with) and
``partN.npz`` files (sentence ids, token lengths and the concatenated tokens), each written
atomically. A run with other settings refuses the directory instead of mixing outputs.
"""

import glob
import json
import logging
import os
import shutil
import time

import numpy as np

from nmt_sd.errors import NmtSdError

logger = logging.getLogger(__name__)


class PartStore:
    """Token sequences by sentence id, flushed to ``root`` every ``interval`` seconds."""

    def __init__(self, root: str, settings: dict, interval: float = 60.0):
        self.root, self.interval, self.last = root, interval, time.time()
        self.done: dict[int, np.ndarray] = {}
        self.pending: dict[int, np.ndarray] = {}
        meta = os.path.join(root, "meta.json")
        if os.path.isfile(meta):
            with open(meta, encoding="utf-8") as f:
                old = json.load(f)
            changed = sorted(
                k for k in set(old) | set(settings) if old.get(k) != settings.get(k)
            )
            if changed:
                raise NmtSdError(
                    f"{root} holds a partial run made with other settings ({', '.join(changed)}); "
                    "use the same settings to resume it, or delete it to start over"
                )
            self._load()
        else:
            os.makedirs(root, exist_ok=True)
            tmp = f"{meta}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(settings, f, indent=1, sort_keys=True)
            os.replace(tmp, meta)

    def _load(self) -> None:
        for path in sorted(glob.glob(os.path.join(self.root, "part*.npz"))):
            with np.load(path) as z:
                ends = np.cumsum(z["lengths"])
                for sid, end, n in zip(
                    z["ids"].tolist(), ends.tolist(), z["lengths"].tolist()
                ):
                    self.done[sid] = z["tokens"][end - n : end]
        if self.done:
            logger.info(
                f"resuming: {len(self.done)} sentences already done in {self.root}"
            )

    def add(self, sid: int, tokens: np.ndarray) -> None:
        self.pending[sid] = tokens
        if time.time() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        self.last = time.time()
        if not self.pending:
            return
        n = len(glob.glob(os.path.join(self.root, "part*.npz")))
        path = os.path.join(self.root, f"part{n}.npz")
        ids = list(self.pending)
        seqs = [self.pending[i] for i in ids]
        tmp = f"{path}.tmp{os.getpid()}.npz"  # np.savez adds .npz to names without it
        np.savez(
            tmp,
            ids=np.array(ids, dtype=np.int64),
            lengths=np.array([len(s) for s in seqs], dtype=np.int64),
            tokens=np.concatenate(seqs).astype(np.int64),
        )
        os.replace(tmp, path)
        self.done.update(self.pending)
        self.pending = {}

    def remove(self) -> None:
        """Delete the parts once the complete output is written."""
        shutil.rmtree(self.root, ignore_errors=True)
