"""Tests for nmt_sd.generation.search on two toy models following the decoder protocol.

- TableModel: hand-set probabilities, p(y_t | source, t, y_{t-1}), so results can be
  derived by hand.
- ToyModel: a tiny random GRU encoder-decoder with dot-product attention, an incremental
  cache, and exact padding invariance (packed encoder, masked attention and mean).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt_sd.errors import NmtSdError
from nmt_sd.generation.greedy import greedy_search
from nmt_sd.generation.search import beam_search, special_ids

BOS, PAD, EOS, UNK = 0, 1, 2, 3
A, B, C, D, E, F = 4, 5, 6, 7, 8, 9
IDS = {"eos": EOS, "pad": PAD, "unk": UNK}


class EncoderOut(NamedTuple):
    out: Tensor  # (B, S, C)
    padding_mask: Tensor  # (B, S) True = pad


def reorder_encoder_out(enc: EncoderOut, new_order: Tensor) -> EncoderOut:
    return EncoderOut(
        enc.out.index_select(0, new_order), enc.padding_mask.index_select(0, new_order)
    )


# --------------------------------------------------------------- hand-set probabilities


class StatelessCache:
    def reorder(self, new_order: Tensor) -> None:
        pass


class TableDecoder(nn.Module):
    """logits[n] = log p(. | source key, step, previous token), from a lookup table."""

    def __init__(self, table: Tensor):
        super().__init__()
        self.table = table  # (keys, steps, V, V) log-probs
        self.batch_sizes: list[int] = []

    def init_cache(self) -> StatelessCache:
        return StatelessCache()

    def forward(self, prev_output_tokens, enc, cache, need_attn=False):
        self.batch_sizes.append(prev_output_tokens.size(0))
        key = enc.out[:, 0, 0].long()  # the first source token names the sentence
        step = prev_output_tokens.size(1) - 1
        logits = self.table[key, step, prev_output_tokens[:, -1]]  # (N, V)
        return logits.unsqueeze(1), {"attn": None}


class TableModel(nn.Module):
    def __init__(self, probs: dict[tuple[int, int, int], dict[int, float]], vocab=10):
        super().__init__()
        # anything not listed ends the sentence: p(</s>) = 1
        table = torch.full((vocab, 8, vocab, vocab), -math.inf)
        table[..., EOS] = 0.0
        for (key, step, prev), dist in probs.items():
            assert abs(sum(dist.values()) - 1) < 1e-9
            table[key, step, prev] = -math.inf
            for tok, p in dist.items():
                table[key, step, prev, tok] = math.log(p)
        self.decoder = TableDecoder(table)

    def encoder(self, src_tokens, src_lengths):
        return EncoderOut(src_tokens.float().unsqueeze(-1), src_tokens.eq(PAD))

    def reorder_encoder_out(self, enc, new_order):
        return reorder_encoder_out(enc, new_order)

    def max_decoder_positions(self) -> int:
        return 1024


# Sentence "A": greedy is fooled by a likely first token with an unlikely continuation.
#   step 0: A .5, B .4, C .1
#   after A: </s> .4, B .3, C .3;  after B: </s> .9, A .05, C .05
# Sentence "B": a longer hypothesis with a lower total but a better per-token average.
#   step 0: A .6, B .4;  after A: </s> .55, C .45;  after B: D 1
#   step 2: after D: </s> .5, E .3, F .2;  after C: </s> .1, F .9
HAND_PROBS = {
    (A, 0, EOS): {A: 0.5, B: 0.4, C: 0.1},
    (A, 1, A): {EOS: 0.4, B: 0.3, C: 0.3},
    (A, 1, B): {EOS: 0.9, A: 0.05, C: 0.05},
    (B, 0, EOS): {A: 0.6, B: 0.4},
    (B, 1, A): {EOS: 0.55, C: 0.45},
    (B, 1, B): {D: 1.0},
    (B, 2, D): {EOS: 0.5, E: 0.3, F: 0.2},
    (B, 2, C): {EOS: 0.1, F: 0.9},
    # Sentence "C": a </s> candidate ranked below the top `beam` must not finish.
    #   step 0: A .6, B .4;  after A: C .5, D .3, </s> .2;  after B: E .6, </s> .4
    #   step 2: after C: </s> .9, F .1;  after E: </s> .7, F .3
    (C, 0, EOS): {A: 0.6, B: 0.4},
    (C, 1, A): {C: 0.5, D: 0.3, EOS: 0.2},
    (C, 1, B): {E: 0.6, EOS: 0.4},
    (C, 2, C): {EOS: 0.9, F: 0.1},
    (C, 2, E): {EOS: 0.7, F: 0.3},
}


def _hand_src(*keys: int) -> tuple[Tensor, Tensor]:
    return torch.tensor([[k, EOS] for k in keys]), torch.tensor([2] * len(keys))


def _toks(hyp) -> list[int]:
    return hyp["tokens"].tolist()


def test_hand_set_greedy_and_beam_differ():
    model = TableModel(HAND_PROBS)
    src, lens = _hand_src(A)
    # greedy: A (.5), then </s> (.4) -> total .2, score ln(.2) / 2 = -0.8047
    (greedy,) = greedy_search(model, src, lens, max_len_b=5, **IDS)
    assert _toks(greedy[0]) == [A, EOS]
    assert greedy[0]["score"] == pytest.approx(math.log(0.2) / 2, abs=1e-6)
    torch.testing.assert_close(
        greedy[0]["positional_scores"], torch.tensor([0.5, 0.4]).log()
    )
    # beam 2, step 0: live A (.5), B (.4). step 1 candidates: B</s> .36, A</s> .2,
    # AB .15, AC .15; both </s> are in the top 2 -> 2 finished, done.
    # B</s>: ln(.36) / 2 = -0.5108 beats A</s>: ln(.2) / 2 = -0.8047
    (hyps,) = beam_search(model, src, lens, beam=2, nbest=2, max_len_b=5, **IDS)
    assert [_toks(h) for h in hyps] == [[B, EOS], [A, EOS]]
    assert hyps[0]["score"] == pytest.approx(math.log(0.36) / 2, abs=1e-6)
    assert hyps[1]["score"] == pytest.approx(math.log(0.2) / 2, abs=1e-6)
    torch.testing.assert_close(
        hyps[0]["positional_scores"], torch.tensor([0.4, 0.9]).log()
    )


@pytest.mark.parametrize(
    "lenpen, best, second",
    [
        # A</s>: .6 * .55 = .33, ln = -1.1087; BD</s>: .4 * 1 * .5 = .2, ln = -1.6094
        (0.0, ([A, EOS], math.log(0.33)), ([B, D, EOS], math.log(0.2))),
        # per token: A</s> -1.1087 / 2 = -0.5544 < BD</s> -1.6094 / 3 = -0.5365
        (1.0, ([B, D, EOS], math.log(0.2) / 3), ([A, EOS], math.log(0.33) / 2)),
    ],
)
def test_hand_set_lenpen_changes_ranking(lenpen, best, second):
    # beam 2: step 1 candidates BD .4, A</s> .33, AC .27 -> A</s> finished (1 of 2);
    # step 2 candidates ACF .243, BD</s> .2, BDE .12 -> BD</s> finished (2 of 2), done.
    model = TableModel(HAND_PROBS)
    src, lens = _hand_src(B)
    (hyps,) = beam_search(
        model, src, lens, beam=2, nbest=2, lenpen=lenpen, max_len_b=5, **IDS
    )
    assert [(_toks(h), h["score"]) for h in hyps] == [
        (best[0], pytest.approx(best[1], abs=1e-6)),
        (second[0], pytest.approx(second[1], abs=1e-6)),
    ]


def test_hand_set_only_top_beam_eos_candidates_finish():
    model = TableModel(HAND_PROBS)
    # beam 2, step 1 candidates: AC .30, BE .24, AD .18, B</s> .16, so B</s> (4th) is
    # dropped. step 2: AC</s> .27, BE</s> .168, BEF .072, ACF .03 -> both finish.
    # AC</s>: ln(.27) / 3 = -0.4365; BE</s>: ln(.168) / 3 = -0.5946
    # (a wrongly finished B</s> would score ln(.16) / 2 = -0.9163 and rank second)
    (hyps,) = beam_search(model, *_hand_src(C), beam=2, nbest=2, max_len_b=5, **IDS)
    assert [_toks(h) for h in hyps] == [[A, C, EOS], [B, E, EOS]]
    assert [h["score"] for h in hyps] == pytest.approx(
        [math.log(0.27) / 3, math.log(0.168) / 3], abs=1e-6
    )


def test_hand_set_batched_equals_single_and_batch_shrinks():
    model = TableModel(HAND_PROBS)
    singles = [
        beam_search(model, *_hand_src(k), beam=2, nbest=2, max_len_b=5, **IDS)[0]
        for k in (A, B)
    ]
    model.decoder.batch_sizes.clear()
    src, lens = _hand_src(A, B)
    batched = beam_search(model, src, lens, beam=2, nbest=2, max_len_b=5, **IDS)
    assert [[_toks(h) for h in s] for s in batched] == [
        [_toks(h) for h in s] for s in singles
    ]
    # 2 sentences x beam 2; sentence A is done after step 1, sentence B after step 2
    assert model.decoder.batch_sizes == [4, 4, 2]


# ------------------------------------------------------------------- tiny neural toy


class ToyCache:
    def __init__(self):
        self.hidden: Tensor | None = None  # (N, C)
        self.steps = 0

    def reorder(self, new_order: Tensor) -> None:
        self.hidden = self.hidden.index_select(0, new_order)


class ToyEncoder(nn.Module):
    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.rnn = nn.GRU(dim, dim, batch_first=True)

    def forward(self, src_tokens, src_lengths):
        x = self.embed_tokens(src_tokens)  # (B, S, C)
        packed = pack_padded_sequence(
            x, src_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = pad_packed_sequence(
            self.rnn(packed)[0], batch_first=True, total_length=x.size(1)
        )
        return EncoderOut(out, src_tokens.eq(PAD))


class ToyDecoder(nn.Module):
    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.init_proj = nn.Linear(dim, dim)
        self.cell = nn.GRUCell(dim, dim)
        self.output_projection = nn.Linear(2 * dim, vocab)
        self.batch_sizes: list[int] = []

    def init_cache(self) -> ToyCache:
        return ToyCache()

    def forward(self, prev_output_tokens, enc, cache, need_attn=False):
        # the search must pass the full prefix, starting with </s>
        assert prev_output_tokens.size(1) == cache.steps + 1
        assert bool(prev_output_tokens[:, 0].eq(EOS).all())
        self.batch_sizes.append(prev_output_tokens.size(0))
        keep = (~enc.padding_mask).unsqueeze(-1).float()  # (N, S, 1)
        if cache.hidden is None:
            mean = (enc.out * keep).sum(1) / keep.sum(1)  # (N, C)
            cache.hidden = torch.tanh(self.init_proj(mean))
        # (N, C)
        h = self.cell(self.embed_tokens(prev_output_tokens[:, -1]), cache.hidden)
        cache.hidden, cache.steps = h, cache.steps + 1
        scores = torch.einsum("nsc,nc->ns", enc.out, h).masked_fill(
            enc.padding_mask, -math.inf
        )
        attn = torch.softmax(scores, dim=-1)  # (N, S)
        ctx = torch.einsum("ns,nsc->nc", attn, enc.out)
        logits = self.output_projection(torch.cat([h, ctx], dim=-1))  # (N, V)
        return logits.unsqueeze(1), {"attn": attn.unsqueeze(1)}


class ToyModel(nn.Module):
    def __init__(self, vocab: int = 12, dim: int = 16, max_positions: int = 64):
        super().__init__()
        self.encoder = ToyEncoder(vocab, dim)
        self.decoder = ToyDecoder(vocab, dim)
        self.max_positions = max_positions

    def reorder_encoder_out(self, enc, new_order):
        return reorder_encoder_out(enc, new_order)

    def max_decoder_positions(self) -> int:
        return self.max_positions


def make_toy(seed: int = 0, bias: dict[int, float] | None = None, **kwargs) -> ToyModel:
    torch.manual_seed(seed)
    model = ToyModel(**kwargs)
    with torch.no_grad():
        for tok, b in (bias or {}).items():
            model.decoder.output_projection.bias[tok] += b
    return model


def ragged_batch(lengths=(5, 2, 7, 3), vocab=12, seed=1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), PAD)
    for i, n in enumerate(lengths):
        src[i, : n - 1] = torch.randint(4, vocab, (n - 1,), generator=gen)
        src[i, n - 1] = EOS
    return src, torch.tensor(lengths)


def _check_wellformed(hyps, lenpen=1.0):
    for h in hyps:
        toks = _toks(h)
        assert toks[-1] == EOS and EOS not in toks[:-1] and PAD not in toks
        assert h["positional_scores"].shape == h["tokens"].shape
        total = h["positional_scores"].sum().item()
        assert h["score"] == pytest.approx(total / len(toks) ** lenpen, abs=1e-5)


@pytest.mark.parametrize("beam", [1, 3, 5])
def test_batched_equals_single(beam):
    model = make_toy(bias={EOS: 1.0})
    src, lens = ragged_batch()
    opts = dict(beam=beam, nbest=beam, max_len_a=1.0, max_len_b=4, lenpen=1.0, **IDS)
    batched = beam_search(model, src, lens, **opts)
    for i, n in enumerate(lens.tolist()):
        (single,) = beam_search(model, src[i : i + 1, :n], lens[i : i + 1], **opts)
        assert len(batched[i]) == len(single) == beam
        _check_wellformed(single)
        for got, want in zip(batched[i], single, strict=True):
            assert _toks(got) == _toks(want)
            assert got["score"] == pytest.approx(want["score"], abs=1e-5)
            torch.testing.assert_close(
                got["positional_scores"], want["positional_scores"], atol=1e-5, rtol=0
            )


@pytest.mark.parametrize("lenpen", [0.0, 1.0, 2.0])
def test_beam1_equals_greedy(lenpen):
    model = make_toy(seed=3, bias={EOS: 1.0})
    src, lens = ragged_batch()
    opts = dict(max_len_a=1.0, max_len_b=6, lenpen=lenpen, **IDS)
    by_beam = beam_search(model, src, lens, beam=1, **opts)
    by_greedy = greedy_search(model, src, lens, **opts)
    for (b,), (g,) in zip(by_beam, by_greedy, strict=True):
        assert _toks(b) == _toks(g)
        assert b["positional_scores"].sum().item() == pytest.approx(
            g["positional_scores"].sum().item(), abs=1e-5
        )
        assert b["score"] == pytest.approx(g["score"], abs=1e-5)
    _check_wellformed([h for (h,) in by_greedy], lenpen=lenpen)


def test_min_len_respected():
    model = make_toy(bias={EOS: 8.0})  # </s> is by far the likeliest token
    src, lens = ragged_batch()
    short = beam_search(
        model, src, lens, beam=3, nbest=3, max_len_b=10, min_len=1, **IDS
    )
    assert {len(h["tokens"]) for hyps in short for h in hyps[:1]} == {2}
    for min_len in (1, 4):
        out = beam_search(
            model, src, lens, beam=3, nbest=3, max_len_b=10, min_len=min_len, **IDS
        )
        out += greedy_search(model, src, lens, max_len_b=10, min_len=min_len, **IDS)
        for hyps in out:
            _check_wellformed(hyps)
            # </s> forbidden at steps < min_len: at least min_len tokens before it
            assert min(len(h["tokens"]) for h in hyps) == min_len + 1


def test_max_len_forces_eos():
    model = make_toy(bias={EOS: -30.0}, max_positions=9)  # </s> never chosen freely
    src, lens = ragged_batch()  # lengths 5, 2, 7, 3
    out = beam_search(
        model, src, lens, beam=3, nbest=3, max_len_a=1.5, max_len_b=1, **IDS
    )
    out_greedy = greedy_search(model, src, lens, max_len_a=1.5, max_len_b=1, **IDS)
    # max_len = min(int(1.5 * src_len + 1), 9 - 1) = 8, 4, 8 (capped from 11), 5;
    # the forced </s> comes after max_len tokens
    expected = [9, 5, 9, 6]
    for hyps, g, n in zip(out, out_greedy, expected, strict=True):
        assert [len(h["tokens"]) for h in hyps + g] == [n] * 4
        _check_wellformed(hyps + g)
        # the forced </s> keeps its own model log-prob (about -30 + O(1))
        assert all(-40 < h["positional_scores"][-1].item() < -20 for h in hyps + g)


def test_nbest_sorted_and_distinct():
    model = make_toy(seed=5, bias={EOS: 1.5})
    src, lens = ragged_batch()
    out = beam_search(
        model, src, lens, beam=5, nbest=5, max_len_a=1.0, max_len_b=5, lenpen=0.7, **IDS
    )
    for hyps in out:
        assert len(hyps) == 5
        scores = [h["score"] for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(_toks(h)) for h in hyps}) == 5
        _check_wellformed(hyps, lenpen=0.7)
    top1 = beam_search(
        model, src, lens, beam=5, nbest=1, max_len_a=1.0, max_len_b=5, lenpen=0.7, **IDS
    )
    assert [_toks(a[0]) for a in top1] == [_toks(b[0]) for b in out]


def test_pad_never_generated_and_unk_penalty():
    model = make_toy(bias={PAD: 30.0, UNK: 6.0})
    src, lens = ragged_batch()
    opts = dict(beam=3, nbest=3, max_len_b=6, **IDS)
    with_unk = beam_search(model, src, lens, **opts)
    assert all(UNK in _toks(h) for hyps in with_unk for h in hyps)
    penalised = beam_search(model, src, lens, unk_penalty=100.0, **opts)
    penalised += greedy_search(model, src, lens, max_len_b=6, unk_penalty=100.0, **IDS)
    for hyps in with_unk + penalised:
        _check_wellformed(hyps)  # includes: no pad
    assert not any(UNK in _toks(h) for hyps in penalised for h in hyps)


@pytest.mark.parametrize("beam", [1, 3])
def test_batch_shrinks_as_sentences_finish(beam):
    model = make_toy(bias={EOS: -30.0})  # every sentence ends at its own max length
    src, lens = ragged_batch(lengths=(2, 4, 6))
    # max_len = src_len: forced </s> at step 2, 4, 6
    opts = dict(max_len_a=1.0, max_len_b=0, **IDS)
    for search in (beam_search, greedy_search):
        model.decoder.batch_sizes.clear()
        extra = {"beam": beam} if search is beam_search else {}
        search(model, src, lens, **opts, **extra)
        k = beam if search is beam_search else 1
        assert model.decoder.batch_sizes == [3 * k] * 3 + [2 * k] * 2 + [1 * k] * 2


def test_return_attn_shapes_and_batching():
    model = make_toy(bias={EOS: 1.0})
    src, lens = ragged_batch()
    opts = dict(beam=3, nbest=2, max_len_b=5, return_attn=True, **IDS)
    batched = beam_search(model, src, lens, **opts)
    for i, n in enumerate(lens.tolist()):
        (single,) = beam_search(model, src[i : i + 1, :n], lens[i : i + 1], **opts)
        for got, want in zip(batched[i], single, strict=True):
            assert got["attention"].shape == (n, len(got["tokens"]))
            torch.testing.assert_close(
                got["attention"].sum(0), torch.ones(len(got["tokens"]))
            )
            torch.testing.assert_close(
                got["attention"], want["attention"], atol=1e-5, rtol=0
            )
            assert got["alignment"].tolist() == want["alignment"].tolist()
    (greedy,) = greedy_search(
        model, src[:1], lens[:1], max_len_b=5, return_attn=True, **IDS
    )
    assert greedy[0]["attention"].shape == (5, len(greedy[0]["tokens"]))
    # a decoder without attention: the keys are simply absent
    (hand,) = beam_search(
        TableModel(HAND_PROBS),
        *_hand_src(A),
        beam=2,
        max_len_b=5,
        return_attn=True,
        **IDS,
    )
    assert "attention" not in hand[0]


def test_training_mode_restored_and_arguments_checked():
    model = make_toy()
    model.train()
    src, lens = ragged_batch()
    beam_search(model, src, lens, beam=2, max_len_b=3, **IDS)
    assert model.training
    with pytest.raises(NmtSdError, match="--nbest"):
        beam_search(model, src, lens, beam=2, nbest=3, **IDS)

    class Dictionary:
        def eos(self):
            return EOS

        def pad(self):
            return PAD

        def unk(self):
            return UNK

    assert special_ids(Dictionary()) == IDS


def reference_beam(model, src_tokens, beam, max_len, min_len, lenpen):
    """A plain per-sentence, list-based rendering of fairseq's beam search rules."""
    enc = model.encoder(src_tokens[None], torch.tensor([len(src_tokens)]))
    enc = reorder_encoder_out(enc, torch.zeros(beam, dtype=torch.long))
    cache, live, finished = model.decoder.init_cache(), [([EOS], 0.0)] * beam, []
    for step in range(max_len + 1):
        logits, _ = model.decoder(
            torch.tensor([toks for toks, _ in live]), enc, cache=cache
        )
        lprobs = torch.log_softmax(logits[:, -1].float(), dim=-1).double()
        lprobs[:, PAD] = -math.inf
        if step < min_len:
            lprobs[:, EOS] = -math.inf
        if step >= max_len:
            lprobs[:, :EOS], lprobs[:, EOS + 1 :] = -math.inf, -math.inf
        parents = range(beam if step else 1)  # the beams are identical at step 0
        cands = [
            (cum + lprobs[i, t].item(), i, t)
            for i in parents
            for t in range(lprobs.size(1))
            for cum in [live[i][1]]
        ]
        cands = sorted(cands, key=lambda c: -c[0])[: 2 * beam]
        for score, i, t in cands[:beam]:  # only </s> among the top `beam` finishes
            if t == EOS and score > -math.inf and len(finished) < beam:
                finished.append((live[i][0][1:] + [EOS], score / (step + 1) ** lenpen))
        if len(finished) == beam:
            break
        nxt = [c for c in cands if c[2] != EOS][:beam]
        cache.reorder(torch.tensor([i for _, i, _ in nxt]))
        live = [(live[i][0] + [t], score) for score, i, t in nxt]
    return sorted(finished, key=lambda f: -f[1])


@pytest.mark.parametrize("beam, lenpen", [(2, 1.0), (4, 0.5)])
def test_matches_reference_beam_search(beam, lenpen):
    model = make_toy(seed=7, bias={EOS: 1.5}).eval()
    src, lens = ragged_batch(seed=2)
    out = beam_search(
        model,
        src,
        lens,
        beam=beam,
        nbest=beam,
        max_len_b=6,
        min_len=2,
        lenpen=lenpen,
        **IDS,
    )
    for i, n in enumerate(lens.tolist()):
        with torch.no_grad():
            want = reference_beam(
                model, src[i, :n], beam, max_len=6, min_len=2, lenpen=lenpen
            )
        assert [_toks(h) for h in out[i]] == [toks for toks, _ in want]
        assert [h["score"] for h in out[i]] == pytest.approx(
            [s for _, s in want], abs=1e-5
        )
