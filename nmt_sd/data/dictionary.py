"""fairseq-compatible dictionary (``dict.txt``: one ``symbol count`` line per symbol).

Special symbols: ``<s>=0 <pad>=1 </s>=2 <unk>=3`` are implicit (never written to
``dict.txt``), as in fairseq. ``<mask>`` is always present (written by
``nmt-sd-preprocess``, appended on load if missing) so that the CMLM decoder of
``cmlm_kd`` shares the vocabulary of the translation model.
"""

import os
from collections import Counter
from multiprocessing import Pool
from typing import Iterable, List, Optional

import numpy as np
import torch

from nmt_sd.errors import NmtSdError

MASK = "<mask>"


class Dictionary:
    def __init__(self) -> None:
        self.symbols: List[str] = []
        self.count: List[int] = []
        self.indices = {}
        self.bos_index = self.add_symbol("<s>", 0)
        self.pad_index = self.add_symbol("<pad>", 0)
        self.eos_index = self.add_symbol("</s>", 0)
        self.unk_index = self.add_symbol("<unk>", 0)
        self.nspecial = len(self.symbols)

    # -- lookups -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.symbols)

    def __getitem__(self, idx: int) -> str:
        return self.symbols[idx] if 0 <= idx < len(self.symbols) else "<unk>"

    def __eq__(self, other) -> bool:
        return isinstance(other, Dictionary) and self.symbols == other.symbols

    def index(self, sym: str) -> int:
        return self.indices.get(sym, self.unk_index)

    def bos(self) -> int:
        return self.bos_index

    def pad(self) -> int:
        return self.pad_index

    def eos(self) -> int:
        return self.eos_index

    def unk(self) -> int:
        return self.unk_index

    def mask(self) -> int:
        return self.indices[MASK]

    # -- building ------------------------------------------------------------
    def add_symbol(self, word: str, n: int = 1) -> int:
        if word in self.indices:
            idx = self.indices[word]
            self.count[idx] += n
            return idx
        idx = len(self.symbols)
        self.indices[word] = idx
        self.symbols.append(word)
        self.count.append(n)
        return idx

    @classmethod
    def build(
        cls,
        lines: Iterable[str],
        threshold: int = 0,
        nwords: int = -1,
        padding_factor: int = 8,
    ) -> "Dictionary":
        """Count whitespace tokens; keep those seen > ``threshold`` times (fairseq order:
        by count desc, then alphabetically), add ``<mask>``, pad to ``padding_factor``.
        """
        counts: Counter = Counter()
        for line in lines:
            counts.update(line.split())
        d = cls()
        items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if nwords > 0:
            items = items[:nwords]
        for word, c in items:
            if c > threshold and word not in d.indices:
                d.add_symbol(word, c)
        d.add_symbol(MASK, 0)
        i = 0
        while padding_factor > 1 and len(d) % padding_factor != 0:
            d.add_symbol(f"madeupword{i:04d}", 0)
            i += 1
        return d

    # -- io ------------------------------------------------------------------
    def save(self, path: str) -> None:
        path = str(path)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for sym, c in zip(
                self.symbols[self.nspecial :], self.count[self.nspecial :]
            ):
                f.write(f"{sym} {c}\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "Dictionary":
        if not os.path.isfile(path):
            raise NmtSdError(f"dictionary not found: {path}")
        d = cls()
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    raise NmtSdError(f"{path}:{lineno}: invalid UTF-8 in dictionary")
                if not line.strip():
                    continue
                parts = line.rsplit(" ", 1)
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise NmtSdError(
                        f"{path}:{lineno}: bad dictionary line, expected '<symbol> <count>'"
                    )
                d.add_symbol(parts[0], int(parts[1]))
        if MASK not in d.indices:
            d.add_symbol(MASK, 0)
        return d

    # -- encode / decode -----------------------------------------------------
    def encode_line(self, line: str, append_eos: bool = True) -> np.ndarray:
        ids = [self.indices.get(w, self.unk_index) for w in line.split()]
        if append_eos:
            ids.append(self.eos_index)
        return np.asarray(ids, dtype=np.int64)

    def string(
        self,
        tokens,
        bpe_symbol: Optional[str] = None,
        unk_string: Optional[str] = None,
        extra_ignore: Iterable[int] = (),
    ) -> str:
        """Token ids -> text, dropping pad/eos/bos; ``bpe_symbol`` as fairseq's --remove-bpe."""
        if torch.is_tensor(tokens):
            tokens = tokens.tolist()
        ignore = {self.pad_index, self.eos_index, self.bos_index, *extra_ignore}
        words = []
        for t in tokens:
            if t in ignore:
                continue
            if t == self.unk_index and unk_string is not None:
                words.append(unk_string)
            else:
                words.append(self[t])
        return post_process(" ".join(words), bpe_symbol)


def post_process(sentence: str, symbol: Optional[str]) -> str:
    """fairseq's --remove-bpe: ``sentencepiece`` joins pieces on U+2581; others strip a suffix."""
    if symbol is None or symbol == "none":
        return sentence
    if symbol == "sentencepiece":
        return sentence.replace(" ", "").replace("\u2581", " ").strip()
    if symbol == "subword_nmt":
        symbol = "@@ "
    return (sentence + " ").replace(symbol, "").rstrip()


_WORKER_DICT: Optional[Dictionary] = None


def _init_worker(d: Dictionary) -> None:
    global _WORKER_DICT
    _WORKER_DICT = d


def _encode_chunk(lines: List[str]):
    return [_WORKER_DICT.encode_line(line) for line in lines]


def binarize(lines: List[str], d: Dictionary, workers: int):
    """``d.encode_line`` of every line, in ``workers`` processes for large inputs."""
    if workers <= 1 or len(lines) < 1000:
        return [d.encode_line(line) for line in lines]
    size = (len(lines) + workers - 1) // workers
    chunks = [lines[i : i + size] for i in range(0, len(lines), size)]
    with Pool(workers, initializer=_init_worker, initargs=(d,)) as pool:
        return [a for part in pool.map(_encode_chunk, chunks) for a in part]
