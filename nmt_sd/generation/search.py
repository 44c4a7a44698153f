"""Batched beam search and greedy decoding with an incremental decoder cache.

The search semantics follow fairseq's SequenceGenerator (Ott et al., 2019, "fairseq: A
Fast, Extensible Toolkit for Sequence Modeling", arXiv 1904.01038), reimplemented with
dense tensors instead of per-sentence Python bookkeeping:
score(hyp) = sum_t lprob(y_t) / len(hyp) ** lenpen, with len counting the final </s>.

Model protocol (what ``nmt_sd/models/transformer.py`` provides)::

    enc = model.encoder(src_tokens, src_lengths)  # EncoderOut(out, padding_mask)
    enc = model.reorder_encoder_out(enc, new_order)  # index_select on dim 0
    decoder.groups_beam_rows  # optional: True = one encoder row per sentence in beam search
    cache = model.decoder.init_cache()  # has .reorder(new_order), in place
    logits, extra = model.decoder(prev_output_tokens, enc, cache=cache)
    # with return_attn: model.decoder(..., need_attn=True) must give extra["attn"]
    model.max_decoder_positions()  # int

prev_output_tokens (N, t) is the full prefix, starting with </s>. With a cache only the
last position is computed: logits (N, 1, V); extra["attn"] is None or (N, 1, S).

Both searches (greedy decoding is in ``greedy.py``, what they share in ``decoding.py``)
are vectorised over batch * beam; the only Python loop is over time steps.
Sentences that are done leave the active batch (the cache and encoder output are
reordered to drop them), so the cost of a step falls as sentences finish.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from nmt_sd.generation.decoding import (
    Finished,
    Hypothesis,
    check_search_args,
    decode_step,
    decoding_mode,
    max_lengths,
    to_hypotheses,
)


def special_ids(dictionary: Any) -> dict[str, int]:
    """The ``eos``/``pad``/``unk`` keyword arguments of the searches."""
    return {"eos": dictionary.eos(), "pad": dictionary.pad(), "unk": dictionary.unk()}


# Rows of the vocabulary pass are taken a few at a time so that the float32 log-probs
# of a chunk stay in cache (about this many elements): a full (N, V) float32 tensor is a
# fresh large allocation at every step, and converting, normalising and reading it back
# from memory cost more than the search's top-k itself.
CHUNK_ELEMENTS = 1 << 17


def row_top(
    logits: Tensor, k: int, step: int, row_max_len: Tensor, **constraints: Any
) -> tuple[Tensor, Tensor]:
    """Each row's k best next tokens under the search constraints.

    lprobs = log_softmax(logits) in float32, constrained as ``constrain`` does, then
    top-k per row; computed in chunks of rows, never as a whole (N, V) float32 tensor.

    Args:
        logits: (N, V). row_max_len: (N,) max length of each row's sentence.
    Returns:
        lprobs (N, k) float32, descending, and their tokens (N, k).
    """
    num_rows, vocab = logits.shape
    k = min(k, vocab)
    rows = max(1, CHUNK_ELEMENTS // vocab)
    top_lprobs = torch.empty(num_rows, k, device=logits.device)
    top_tokens = torch.empty(num_rows, k, dtype=torch.long, device=logits.device)
    for start in range(0, num_rows, rows):
        end = min(start + rows, num_rows)
        lprobs = torch.log_softmax(logits[start:end].float(), dim=-1)  # (n, V)
        constrain(lprobs, step, row_max_len[start:end], **constraints)
        torch.topk(lprobs, k, dim=1, out=(top_lprobs[start:end], top_tokens[start:end]))
    return top_lprobs, top_tokens


def constrain(
    lprobs: Tensor,
    step: int,
    row_max_len: Tensor,
    *,
    min_len: int,
    unk_penalty: float,
    eos: int,
    pad: int,
    unk: int,
) -> Tensor:
    """Apply the search constraints to lprobs (N, V) in place, as fairseq does.

    No pad ever; unk_penalty subtracted from unk; no </s> while step < min_len; </s>
    forced (with its own model log-prob) in rows whose max length row_max_len (N,) is
    reached.
    Forcing wins over min_len when the two conflict, so every sentence still ends.
    """
    eos_lprobs = lprobs[:, eos].clone()  # (N,) before min_len masks it
    lprobs[:, pad] = -math.inf
    lprobs[:, unk] -= unk_penalty
    if step < min_len:
        lprobs[:, eos] = -math.inf
    forced = row_max_len <= step  # (N,)
    if bool(forced.any()):
        lprobs.masked_fill_(forced.unsqueeze(1), -math.inf)
        lprobs[:, eos] = torch.where(forced, eos_lprobs, lprobs[:, eos])
    return lprobs


def _finalize(
    fin: Finished,
    state: dict[str, Tensor],
    step: int,
    cands: tuple[Tensor, ...],
    lenpen: float,
    eos: int,
) -> None:
    """Store this step's </s> candidates in free slots of their sentence (vectorised).

    Only </s> candidates among the top K (= beam) of the 2K count, as in fairseq. A
    candidate is kept if its sentence still has a free slot after the better-ranked </s>
    candidates of the same step have been stored.
    """
    slots = fin.tokens.size(1)
    # (B', K) each
    cand_rows, _, cand_scores, cand_lprobs, is_eos = (c[:, :slots] for c in cands)
    sent = state["sent_ids"].unsqueeze(1).expand_as(is_eos)  # (B', K)
    slot = fin.count[state["sent_ids"]].unsqueeze(1) + is_eos.long().cumsum(1) - 1
    keep = is_eos & (slot < slots)  # (B', K)
    if not bool(keep.any()):
        return
    b, k, rows = sent[keep], slot[keep], cand_rows[keep]  # (n,) each
    fin.tokens[b, k, :step] = state["tokens"][rows, 1 : step + 1]
    fin.tokens[b, k, step] = eos
    fin.pos_scores[b, k, :step] = state["pos_scores"][rows, :step]
    # the </s> log-prob of each parent row
    fin.pos_scores[b, k, step] = cand_lprobs[keep]
    fin.scores[b, k] = cand_scores[keep] / (step + 1) ** lenpen
    fin.lengths[b, k] = step + 1
    if fin.attn is not None:
        fin.attn[b, k, : step + 1] = state["attn"][rows, : step + 1]
    fin.count.index_add_(0, state["sent_ids"], keep.long().sum(1))


def _select_candidates(
    row_lprobs: Tensor, row_tokens: Tensor, cum_scores: Tensor, beam: int, eos: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Top 2*beam candidates over beam*V per sentence.

    Args:
        row_lprobs, row_tokens: (B'*K, 2K) each row's own top 2K constrained log-probs
            and their tokens (``row_top``).
        cum_scores: (B'*K,) summed log-probs of each live hypothesis.
    Returns:
        cand_rows (B', 2K) row of the parent hypothesis in the active batch,
        cand_tokens (B', 2K), cand_scores (B', 2K), cand_lprobs (B', 2K) the token's
        own log-prob, and is_eos (B', 2K) bool.
    """
    num_rows, row_k = row_lprobs.shape
    bsz = num_rows // beam
    # 2K candidates: at most K of them end in </s>, so K live ones always remain. The
    # sentence's top 2K over beam*V are among its rows' own top 2K (cum_scores is
    # constant along a row), so the sentence picks from those beam*2K: the same
    # candidates as one top-k over beam*V, in a fraction of the time.
    row_scores = (row_lprobs + cum_scores.unsqueeze(1)).view(bsz, beam * row_k)
    # (B', 2K)
    cand_scores, cand_idx = row_scores.topk(min(2 * beam, beam * row_k), dim=1)
    offsets = torch.arange(bsz, device=row_lprobs.device).unsqueeze(1) * beam
    cand_rows = cand_idx // row_k + offsets
    cand_tokens = row_tokens.view(bsz, beam * row_k).gather(1, cand_idx)
    cand_lprobs = row_lprobs.view(bsz, beam * row_k).gather(1, cand_idx)
    is_eos = cand_tokens.eq(eos) & cand_scores.ne(-math.inf)
    return cand_rows, cand_tokens, cand_scores, cand_lprobs, is_eos


def _advance_beams(
    state: dict[str, Tensor],
    fin: Finished,
    step: int,
    cands: tuple[Tensor, ...],
) -> Tensor | None:
    """Keep the K best non-</s> candidates of unfinished sentences (state in place).

    A sentence is done once it has K finished hypotheses (fairseq's stopping rule) or
    has reached its max length.

    Returns:
        new_order (N',): the row of the old active batch each surviving row comes from
        (to reorder the cache), or None if no sentence is left.
    """
    cand_rows, cand_tokens, cand_scores, cand_lprobs, is_eos = cands  # (B', 2K) each
    beam, num_cands = fin.tokens.size(1), cand_rows.size(1)
    # rank </s> candidates after all others, then keep the first K in candidate order
    rank = is_eos.long() * num_cands + torch.arange(num_cands, device=cand_rows.device)
    pick = rank.topk(beam, dim=1, largest=False).indices  # (B', K)
    at_max_len = state["max_len"].view(-1, beam)[:, 0].le(step)  # (B',)
    alive = fin.count[state["sent_ids"]].lt(beam) & ~at_max_len  # (B',)
    if not bool(alive.any()):
        return None
    pick = pick[alive]  # (B'', K)
    new_order = cand_rows[alive].gather(1, pick).view(-1)  # (N',)
    tokens = cand_tokens[alive].gather(1, pick).view(-1)  # (N',)
    state["cum_scores"] = cand_scores[alive].gather(1, pick).view(-1)
    state["sent_ids"] = state["sent_ids"][alive]
    for key in ("tokens", "pos_scores", "max_len", "attn"):
        if key in state:
            state[key] = state[key].index_select(0, new_order)
    state["tokens"][:, step + 1] = tokens
    state["pos_scores"][:, step] = cand_lprobs[alive].gather(1, pick).view(-1)
    return new_order


def _init_beam_state(
    max_len: Tensor, beam: int, src_len: int, bos: int, pad: int, with_attn: bool
) -> tuple[dict[str, Tensor], Finished]:
    """Active-batch tensors, one row per (sentence, beam) pair (N = B * K at first),
    and the empty store of finished hypotheses.

    Args:
        max_len: (B,) per-sentence max length from ``max_lengths``.
    """
    bsz, device = max_len.size(0), max_len.device
    width = int(max_len.max()) + 1  # generated tokens, including the final </s>
    tokens = torch.full((bsz * beam, width + 1), pad, dtype=torch.long, device=device)
    tokens[:, 0] = (
        bos  # decoding starts from </s> (fairseq's convention) or a language tag
    )
    # the K beams start identical: only beam 0 may expand at step 0
    cum_scores = torch.full((bsz, beam), -math.inf, device=device)
    cum_scores[:, 0] = 0.0
    state = {
        "sent_ids": torch.arange(
            bsz, device=device
        ),  # (B',) input index of each sentence
        "tokens": tokens,  # (N, width + 1) prefixes, </s> first
        "cum_scores": cum_scores.view(-1),  # (N,)
        "pos_scores": torch.zeros(bsz * beam, width, device=device),  # (N, width)
        "max_len": max_len.repeat_interleave(beam),  # (N,)
    }
    if with_attn:
        state["attn"] = torch.zeros(bsz * beam, width, src_len, device=device)
    fin = Finished.empty(bsz, beam, width, src_len, pad, with_attn, device)
    return state, fin


def _record_attn(
    state: dict[str, Tensor], fin: Finished, attn: Tensor | None, step: int
) -> None:
    """Keep this step's cross-attention (N, S); drop it all if the decoder has none."""
    if "attn" in state and attn is None:
        del state["attn"]
        fin.attn = None
    elif "attn" in state:
        state["attn"][:, step] = attn


def _encode_for_beams(
    model: nn.Module, src_tokens: Tensor, src_lengths: Tensor, beam: int
) -> tuple[Any, bool]:
    """Encode the batch and lay the encoder output out for the beam rows.

    A decoder that sets ``groups_beam_rows`` takes one encoder row per sentence and
    groups the K beam rows onto it (cross-attention K/V computed and kept once); any
    other decoder gets the encoder output repeated per beam.

    Returns:
        enc, (B, S, C) when grouped else (B * K, S, C), and grouped.
    """
    enc = model.encoder(src_tokens, src_lengths)  # (B, S, C)
    grouped = getattr(model.decoder, "groups_beam_rows", False)
    if not grouped:
        bsz = src_tokens.size(0)
        rows = torch.arange(bsz, device=src_tokens.device).repeat_interleave(beam)
        enc = model.reorder_encoder_out(enc, rows)  # (B * K, S, C)
    return enc, grouped


def _reorder_rows(
    model: nn.Module,
    cache: Any,
    enc: Any,
    new_order: Tensor,
    num_rows: int,
    beam: int,
    grouped: bool,
) -> Any:
    """Make the decoder cache (in place) and the encoder output follow the survivors.

    Not grouped: the whole cache follows ``new_order``; the encoder output (rows equal
    within a sentence) only when sentences left the batch. Grouped: the self-attention
    cache follows ``new_order``; the cross-attention cache and the encoder output (one
    row per sentence) change only when sentences left the batch.

    Args:
        new_order: (N',) the row of the old active batch (N = num_rows rows) each
            surviving row comes from (``_advance_beams``).
    Returns:
        enc for the new active batch: (N', S, C), or (B'', S, C) when grouped.
    """
    shrink = new_order.numel() < num_rows  # sentences left the batch
    if not grouped:
        cache.reorder(new_order)
        if shrink:
            enc = model.reorder_encoder_out(enc, new_order)  # (N', S, C)
        return enc
    cache.reorder(new_order, parts=("self",))
    if shrink:
        sent_order = new_order.view(-1, beam)[:, 0] // beam  # (B'',) old sentence rows
        cache.reorder(sent_order, parts=("cross",))
        enc = model.reorder_encoder_out(enc, sent_order)  # (B'', S, C)
    return enc


def beam_search(
    model: nn.Module,
    src_tokens: Tensor,
    src_lengths: Tensor,
    *,
    beam: int = 5,
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    min_len: int = 1,
    lenpen: float = 1.0,
    nbest: int = 1,
    unk_penalty: float = 0.0,
    eos: int = 2,
    pad: int = 1,
    unk: int = 3,
    bos: int | None = None,
    return_attn: bool = False,
) -> list[list[Hypothesis]]:
    """Batched beam search; each sentence gets what it would get decoded alone.

    src_tokens (B, S) is right-padded with ``pad``, src_lengths (B,); beam, lenpen,
    nbest, min_len, unk_penalty as fairseq's generate flags; max output length
    max_len_a * src_len + max_len_b per sentence; ``bos`` is the decoder's start symbol
    (default ``eos``, fairseq's convention; a target-language tag under
    ``--decoder-langtok``). Returns, per sentence in input order, up to ``nbest``
    hypotheses by score (desc): {"tokens": (L,) ending in </s>, "score": float,
    "positional_scores": (L,)}, plus ``attention`` (S_i, L) and ``alignment`` (L,) when
    ``return_attn`` and the decoder returns cross-attention. Fewer only if some score -inf.
    """
    check_search_args(beam, nbest, src_tokens, src_lengths)
    src_len = src_tokens.size(1)
    max_len = max_lengths(model, src_lengths, max_len_a, max_len_b)  # (B,)
    state, fin = _init_beam_state(
        max_len, beam, src_len, eos if bos is None else bos, pad, return_attn
    )
    constraints = dict(
        min_len=min_len, unk_penalty=unk_penalty, eos=eos, pad=pad, unk=unk
    )
    with decoding_mode(model):
        # enc: (B, S, C) if the decoder groups beam rows, else (B * K, S, C)
        enc, grouped = _encode_for_beams(model, src_tokens, src_lengths, beam)
        cache = model.decoder.init_cache()
        for step in range(state["pos_scores"].size(1)):
            prefix = state["tokens"][:, : step + 1]  # (N, step + 1)
            logits, attn = decode_step(model, prefix, enc, cache, return_attn)
            row_lprobs, row_tokens = row_top(
                logits, 2 * beam, step, state["max_len"], **constraints
            )
            _record_attn(state, fin, attn, step)
            cands = _select_candidates(
                row_lprobs, row_tokens, state["cum_scores"], beam, eos
            )
            _finalize(fin, state, step, cands, lenpen, eos)
            new_order = _advance_beams(state, fin, step, cands)  # (N',)
            if new_order is None:
                break
            enc = _reorder_rows(
                model, cache, enc, new_order, logits.size(0), beam, grouped
            )
    return to_hypotheses(fin, nbest, src_lengths)
