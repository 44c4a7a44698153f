"""Parallel dataset and the ``collate`` that builds fairseq-style batches."""

from typing import Dict, List, Optional

import numpy as np
import torch


class LanguagePairDataset:
    """Pairs of token arrays (each ending with ``</s>``) from two indexed datasets.

    ``tgt`` may be None (generation without references). Multilingual pairs set
    ``src_langtok`` (a language tag prepended to every source, fairseq's
    ``--encoder-langtok``), ``bos`` (the decoder's start symbol replacing ``</s>`` at
    the head of ``prev_output_tokens``, ``--decoder-langtok``) and the language ids
    that batches carry as ``src_lang_id``/``tgt_lang_id``.
    """

    def __init__(
        self,
        src,
        tgt,
        pad: int,
        eos: int,
        src_lang_id=None,
        tgt_lang_id=None,
        src_langtok: Optional[int] = None,
        bos: Optional[int] = None,
    ):
        if tgt is not None and len(src) != len(tgt):
            raise ValueError(f"source has {len(src)} sentences but target {len(tgt)}")
        self.src, self.tgt = src, tgt
        self.pad, self.eos = pad, eos
        self.src_lang_id, self.tgt_lang_id = src_lang_id, tgt_lang_id
        self.src_langtok, self.bos = src_langtok, bos
        self.src_sizes = np.asarray(src.sizes) + (src_langtok is not None)
        self.tgt_sizes = np.asarray(tgt.sizes) if tgt is not None else None

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> Dict:
        source = self.src[i]
        if self.src_langtok is not None:
            source = np.concatenate([[self.src_langtok], source])
        item = {"id": i, "source": source}
        item["target"] = self.tgt[i] if self.tgt is not None else None
        return item

    def num_tokens(self, i: int) -> int:
        """Batch cost of example i (fairseq: max of source and target length)."""
        if self.tgt_sizes is None:
            return int(self.src_sizes[i])
        return int(max(self.src_sizes[i], self.tgt_sizes[i]))

    def ordered_indices(self) -> np.ndarray:
        """Indices sorted by target then source length (stable), for bucketing."""
        if self.tgt_sizes is None:
            return np.argsort(self.src_sizes, kind="mergesort")
        order = np.argsort(self.src_sizes, kind="mergesort")
        return order[np.argsort(self.tgt_sizes[order], kind="mergesort")]

    def collater(self, items: List[Dict]) -> Dict:
        batch = collate(items, self.pad, self.eos, self.bos)
        if batch and self.src_lang_id is not None:
            batch["src_lang_id"] = torch.full(
                (len(items),), self.src_lang_id, dtype=torch.long
            )
            batch["tgt_lang_id"] = torch.full(
                (len(items),), self.tgt_lang_id, dtype=torch.long
            )
        return batch


def _pad_2d(
    seqs: List[np.ndarray], pad: int, prepend: Optional[int] = None
) -> torch.Tensor:
    """Right-pad ``seqs`` into a (B, T) long tensor; optionally rotate eos to the front."""
    width = max(len(s) for s in seqs)
    out = np.full((len(seqs), width), pad, dtype=np.int64)
    for i, s in enumerate(seqs):
        if prepend is None:
            out[i, : len(s)] = s
        else:  # prev_output_tokens: </s> y_1 ... y_{n-1}
            out[i, 0] = prepend
            out[i, 1 : len(s)] = s[:-1]
    return torch.from_numpy(out)


def collate(items: List[Dict], pad: int, eos: int, bos: Optional[int] = None) -> Dict:
    """Build a batch. All tensors are batch-first and **right-padded** with ``pad``.

    Returns ``{"id": (B,), "nsentences": B, "ntokens": int (target tokens incl. </s>),
    "net_input": {"src_tokens": (B, S), "src_lengths": (B,), "prev_output_tokens": (B, T)},
    "target": (B, T)}``. ``prev_output_tokens`` starts with ``bos`` (default ``</s>``,
    fairseq's convention) and is the target shifted right by one. Right padding keeps
    positions 0..n-1 for every sentence, so a causal mask alone hides target padding.
    """
    if not items:
        return {}
    src = [it["source"] for it in items]
    batch = {
        "id": torch.tensor([it["id"] for it in items], dtype=torch.long),
        "nsentences": len(items),
        "net_input": {
            "src_tokens": _pad_2d(src, pad),
            "src_lengths": torch.tensor([len(s) for s in src], dtype=torch.long),
        },
    }
    if items[0].get("target") is not None:
        tgt = [it["target"] for it in items]
        batch["target"] = _pad_2d(tgt, pad)
        batch["net_input"]["prev_output_tokens"] = _pad_2d(
            tgt, pad, prepend=eos if bos is None else bos
        )
        batch["ntokens"] = int(sum(len(t) for t in tgt))
    else:
        batch["ntokens"] = int(sum(len(s) for s in src))
    return batch
