"""What beam search (``search.py``) and greedy decoding (``greedy.py``) share: the
decoder-protocol calls of one step (see ``search.py`` for the protocol), per-sentence
length limits, argument checks, and the dense store of finished hypotheses with its
unpacking into fairseq-style hypothesis dicts.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from nmt_sd.errors import NmtSdError

Hypothesis = dict[str, Any]


def max_lengths(
    model: nn.Module, src_lengths: Tensor, max_len_a: float, max_len_b: int
) -> Tensor:
    """Per-sentence number of tokens generated before </s> is forced.

    fairseq uses the padded batch width as ``src_len``; we use each sentence's own
    length so that a sentence decodes identically alone or in any batch.

    Returns:
        (B,) long: min(int(max_len_a * src_len + max_len_b), max_decoder_positions - 1).
    """
    limit = model.max_decoder_positions() - 1
    lens = (float(max_len_a) * src_lengths.to(torch.float64) + max_len_b).long()
    return lens.clamp(min=0, max=limit)


@dataclass
class Finished:
    """Finished hypotheses of every input sentence, stored densely.

    K is the number of slots per sentence (beam size) and T the longest possible output.
    """

    tokens: Tensor  # (B, K, T) long, pad after </s>
    pos_scores: Tensor  # (B, K, T) float32
    scores: Tensor  # (B, K) float32, -inf for empty slots
    lengths: Tensor  # (B, K) long, length including </s>
    count: Tensor  # (B,) long, number of filled slots
    attn: Tensor | None  # (B, K, T, S) float32, only when attention is requested

    @classmethod
    def empty(
        cls,
        bsz: int,
        slots: int,
        width: int,
        src_len: int,
        pad: int,
        with_attn: bool,
        device: torch.device,
    ) -> Finished:
        attn = None
        if with_attn:
            attn = torch.zeros(bsz, slots, width, src_len, device=device)
        return cls(
            tokens=torch.full(
                (bsz, slots, width), pad, dtype=torch.long, device=device
            ),
            pos_scores=torch.zeros(bsz, slots, width, device=device),
            scores=torch.full((bsz, slots), -math.inf, device=device),
            lengths=torch.zeros(bsz, slots, dtype=torch.long, device=device),
            count=torch.zeros(bsz, dtype=torch.long, device=device),
            attn=attn,
        )


@contextlib.contextmanager
def decoding_mode(model: nn.Module) -> Iterator[None]:
    """eval() + inference_mode during a search; restores the training flag after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def decode_step(
    model: nn.Module, prefix: Tensor, enc: Any, cache: Any, want_attn: bool
) -> tuple[Tensor, Tensor | None]:
    """One incremental decoder call.

    Returns:
        logits (N, V) in the model's dtype, and attn (N, S) float32 or None.
    """
    # decoders compute attention on request
    kw = {"need_attn": True} if want_attn else {}
    logits, extra = model.decoder(prefix, enc, cache=cache, **kw)
    attn = extra.get("attn") if (want_attn and extra) else None
    if attn is not None:
        attn = attn[:, -1, :].float()  # (N, S)
    return logits[:, -1, :], attn


def check_search_args(
    beam: int, nbest: int, src_tokens: Tensor, src_lengths: Tensor
) -> None:
    """Refuse a bad --beam/--nbest and mis-shaped inputs before any decoding."""
    if beam < 1:
        raise NmtSdError(f"--beam must be >= 1, got {beam}")
    if not 1 <= nbest <= beam:
        raise NmtSdError(f"--nbest must be between 1 and --beam ({beam}), got {nbest}")
    if src_tokens.dim() != 2 or src_lengths.shape != src_tokens.shape[:1]:
        raise ValueError(
            f"expected src_tokens (B, S) and src_lengths (B,), got "
            f"{tuple(src_tokens.shape)} and {tuple(src_lengths.shape)}"
        )


def to_hypotheses(
    fin: Finished, nbest: int, src_lengths: Tensor
) -> list[list[Hypothesis]]:
    """Unpack the dense finished store into per-sentence lists sorted by score (desc).

    ``attention`` is (S_i, L) like fairseq's (source positions x target positions) and
    ``alignment`` (L,) is the most-attended source position of each target token.
    """
    # a stable sort keeps finalisation order among equal scores, like fairseq's sorted()
    order = fin.scores.sort(dim=1, descending=True, stable=True).indices  # (B, K)
    counts, lengths = fin.count.tolist(), fin.lengths.tolist()
    results: list[list[Hypothesis]] = []
    for b, slots in enumerate(order.tolist()):  # output formatting only, not decoding
        hyps = []
        for k in slots[: min(nbest, counts[b])]:
            length = lengths[b][k]
            hyp = {
                "tokens": fin.tokens[b, k, :length].clone(),
                "score": float(fin.scores[b, k]),
                "positional_scores": fin.pos_scores[b, k, :length].clone(),
            }
            if fin.attn is not None:
                attn = fin.attn[b, k, :length, : int(src_lengths[b])].t().contiguous()
                hyp["attention"] = attn  # (S_i, L)
                hyp["alignment"] = attn.argmax(dim=0)  # (L,)
            hyps.append(hyp)
        results.append(hyps)
    return results
