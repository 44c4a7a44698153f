"""Batched greedy (argmax) decoding: ``beam_search``'s constraints, step and output format
at beam 1 (see ``search.py`` for the model protocol)."""

from __future__ import annotations

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
from nmt_sd.generation.search import row_top


def greedy_search(
    model: nn.Module,
    src_tokens: Tensor,
    src_lengths: Tensor,
    *,
    max_len_a: float = 0.0,
    max_len_b: int = 200,
    min_len: int = 1,
    lenpen: float = 1.0,
    unk_penalty: float = 0.0,
    eos: int = 2,
    pad: int = 1,
    unk: int = 3,
    bos: int | None = None,
    return_attn: bool = False,
) -> list[list[Hypothesis]]:
    """Batched greedy (argmax) decoding, with the same constraints and output format as
    ``beam_search`` at beam=1, nbest=1 (score = sum of positional scores / L ** lenpen).
    """
    check_search_args(1, 1, src_tokens, src_lengths)
    bsz, src_len = src_tokens.shape
    device = src_tokens.device
    max_len = max_lengths(model, src_lengths, max_len_a, max_len_b)  # (B,)
    width = int(max_len.max()) + 1
    fin = Finished.empty(bsz, 1, width, src_len, pad, return_attn, device)
    prefix = torch.full((bsz, width + 1), pad, dtype=torch.long, device=device)
    prefix[:, 0] = eos if bos is None else bos  # (B', width + 1)
    sent_ids = torch.arange(bsz, device=device)  # (B',) input index of active rows
    constraints = dict(
        min_len=min_len, unk_penalty=unk_penalty, eos=eos, pad=pad, unk=unk
    )
    with decoding_mode(model):
        enc = model.encoder(src_tokens, src_lengths)
        cache = model.decoder.init_cache()
        for step in range(width):
            prefix_so_far = prefix[:, : step + 1]  # (B', step + 1)
            logits, attn = decode_step(model, prefix_so_far, enc, cache, return_attn)
            best_lprobs, best_tokens = row_top(
                logits, 1, step, max_len[sent_ids], **constraints
            )
            tokens = best_tokens[:, 0]  # (B',)
            # forced </s> even if the model gives it -inf (a forced row has no other finite token)
            tokens.masked_fill_(max_len[sent_ids].le(step), eos)
            done = _record_step(
                fin, sent_ids, step, tokens, best_lprobs[:, 0], attn, eos
            )
            alive = (~done).nonzero().squeeze(1)  # (B'',)
            if alive.numel() == 0:
                break
            if alive.numel() < sent_ids.numel():  # sentences left: shrink the batch
                cache.reorder(alive)
                enc = model.reorder_encoder_out(enc, alive)
                sent_ids, prefix = sent_ids[alive], prefix[alive]
            prefix[:, step + 1] = tokens[alive]
    _score_greedy(fin, lenpen)
    return to_hypotheses(fin, 1, src_lengths)


def _score_greedy(fin: Finished, lenpen: float) -> None:
    """Fill the single slot's score: sum of positional scores / length ** lenpen."""
    lengths = fin.lengths[:, 0]  # (B,)
    width = fin.pos_scores.size(2)
    valid = torch.arange(width, device=lengths.device) < lengths.unsqueeze(1)  # (B, W)
    summed = fin.pos_scores[:, 0].masked_fill(~valid, 0.0).sum(dim=1)  # (B,)
    fin.scores[:, 0] = summed / lengths.to(summed.dtype) ** lenpen
    fin.count.fill_(1)


def _record_step(fin, sent_ids, step, tokens, lprobs, attn, eos) -> Tensor:
    """Write step ``step``'s tokens (B',), scores (B',) and attention into ``fin``;
    returns the (B',) mask of rows that ended with </s>."""
    fin.tokens[sent_ids, 0, step] = tokens
    fin.pos_scores[sent_ids, 0, step] = lprobs
    if fin.attn is not None and attn is None:  # the decoder gives no attention
        fin.attn = None
    elif fin.attn is not None:
        fin.attn[sent_ids, 0, step] = attn
    done = tokens.eq(eos)  # (B',)
    fin.lengths[sent_ids[done], 0] = step + 1
    return done
