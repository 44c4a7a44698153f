"""Beam search and greedy decoding on the real (tiny, random) Transformer."""

import pytest
import torch

from nmt_sd.generation.greedy import greedy_search
from nmt_sd.generation.search import beam_search, special_ids
from nmt_sd.models import TransformerModel
from tests.conftest import ragged_batch, tiny_args, tiny_dict


@pytest.fixture
def model_and_batch():
    d = tiny_dict()
    model = TransformerModel.build_model(
        tiny_args(encoder_normalize_before=True), d, d
    ).eval()
    b = ragged_batch(d, lengths=((5, 4), (3, 6), (7, 2), (2, 3)))
    return model, d, b["net_input"]


def test_beam1_equals_greedy(model_and_batch):
    model, d, net = model_and_batch
    kw = dict(max_len_a=1.0, max_len_b=5, **special_ids(d))
    g = greedy_search(model, net["src_tokens"], net["src_lengths"], **kw)
    b = beam_search(model, net["src_tokens"], net["src_lengths"], beam=1, **kw)
    for hg, hb in zip(g, b):
        assert hg[0]["tokens"].tolist() == hb[0]["tokens"].tolist()
        assert hg[0]["score"] == pytest.approx(hb[0]["score"], abs=1e-5)


@pytest.mark.parametrize("beam", [2, 4])
def test_batched_beam_equals_sentence_by_sentence(model_and_batch, beam):
    model, d, net = model_and_batch
    kw = dict(beam=beam, nbest=beam, max_len_a=1.0, max_len_b=5, **special_ids(d))
    batched = beam_search(model, net["src_tokens"], net["src_lengths"], **kw)
    for i, n in enumerate(net["src_lengths"].tolist()):
        alone = beam_search(
            model, net["src_tokens"][i : i + 1, :n], net["src_lengths"][i : i + 1], **kw
        )[0]
        assert [h["tokens"].tolist() for h in alone] == [
            h["tokens"].tolist() for h in batched[i]
        ]
        for ha, hb in zip(alone, batched[i]):
            assert ha["score"] == pytest.approx(hb["score"], abs=1e-5)


def test_beam_scores_are_model_log_probs(model_and_batch):
    """Positional scores equal the full forward pass's log-probs of the chosen tokens."""
    model, d, net = model_and_batch
    hyps = beam_search(
        model,
        net["src_tokens"][:1, :5],
        net["src_lengths"][:1],
        beam=3,
        max_len_a=0,
        max_len_b=6,
        lenpen=0.0,
        **special_ids(d),
    )
    tokens = hyps[0][0]["tokens"]
    prev = torch.cat([torch.tensor([d.eos()]), tokens[:-1]]).unsqueeze(0)
    with torch.no_grad():
        logits, _ = model(net["src_tokens"][:1, :5], net["src_lengths"][:1], prev)
    lp = (
        torch.log_softmax(logits.float(), -1)[0]
        .gather(-1, tokens.unsqueeze(-1))
        .squeeze(-1)
    )
    torch.testing.assert_close(
        hyps[0][0]["positional_scores"], lp, atol=1e-5, rtol=1e-5
    )
    assert hyps[0][0]["score"] == pytest.approx(lp.sum().item(), abs=1e-4)


@pytest.mark.parametrize("beam", [3, 5])
def test_grouped_cross_attention_equals_repeated_encoder_rows(
    model_and_batch, beam, monkeypatch
):
    """One encoder row per sentence (beams grouped in cross-attention) gives the same
    hypotheses, scores and attention as the encoder output repeated per beam."""
    model, d, net = model_and_batch
    kw = dict(
        beam=beam,
        nbest=beam,
        max_len_a=1.0,
        max_len_b=5,
        return_attn=True,
        **special_ids(d),
    )
    grouped = beam_search(model, net["src_tokens"], net["src_lengths"], **kw)
    monkeypatch.setattr(type(model.decoder), "groups_beam_rows", False)
    repeated = beam_search(model, net["src_tokens"], net["src_lengths"], **kw)
    for hs_g, hs_r in zip(grouped, repeated):
        assert [h["tokens"].tolist() for h in hs_g] == [
            h["tokens"].tolist() for h in hs_r
        ]
        for hg, hr in zip(hs_g, hs_r):
            assert hg["score"] == pytest.approx(hr["score"], abs=1e-5)
            torch.testing.assert_close(
                hg["attention"], hr["attention"], atol=1e-5, rtol=1e-5
            )


def test_two_stage_candidates_equal_one_topk_over_beam_times_vocab():
    """Cutting each row to its top 2K before the sentence's top 2K selects the same
    candidates (parents, tokens, scores, the tokens' own log-probs) as one top-k over beam * V.
    """
    import math

    from nmt_sd.generation.search import _select_candidates

    torch.manual_seed(0)
    bsz, beam, vocab = 4, 3, 11
    lprobs = torch.log_softmax(torch.randn(bsz * beam, vocab, dtype=torch.float64), -1)
    lprobs[:, 1] = -math.inf  # pad
    cum = torch.randn(bsz * beam, dtype=torch.float64)
    cum.view(bsz, beam)[0, 1:] = -math.inf  # a sentence at step 0: only beam 0 expands
    rows, tokens, scores, own, _ = _select_candidates(
        *lprobs.topk(2 * beam, dim=1), cum, beam, eos=2
    )
    flat = (cum.unsqueeze(1) + lprobs).view(bsz, beam * vocab)
    ref_scores, ref_idx = flat.topk(2 * beam, dim=1)
    torch.testing.assert_close(scores, ref_scores)
    assert torch.equal(tokens, ref_idx % vocab)
    assert torch.equal(rows, ref_idx // vocab + torch.arange(bsz).unsqueeze(1) * beam)
    assert torch.equal(own, lprobs[rows, tokens])


@pytest.mark.parametrize(
    "chunk", [11, 30, 1 << 17]
)  # 1 row, 2 rows (last chunk short), all rows
def test_row_top_in_chunks_equals_the_whole_constrained_log_softmax(chunk, monkeypatch):
    """The chunked vocabulary pass gives each row's top k of log_softmax + constraints
    (pad, unk penalty, min_len, forced </s>) computed on the whole (N, V) tensor."""
    from nmt_sd.generation import search

    monkeypatch.setattr(search, "CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    logits = torch.randn(5, 11).bfloat16()
    row_max_len = torch.tensor([9, 2, 9, 9, 2])  # rows 1 and 4 must end now (step 2)
    kw = dict(min_len=1, unk_penalty=0.5, eos=2, pad=1, unk=3)
    for step in (0, 2):
        ref = search.constrain(
            torch.log_softmax(logits.float(), -1), step, row_max_len, **kw
        ).topk(4, dim=1)
        got = search.row_top(logits, 4, step, row_max_len, **kw)
        assert torch.equal(got[0], ref.values) and torch.equal(got[1], ref.indices)
        assert got[0].dtype == torch.float32
    # forced: </s> alone is finite
    assert got[1][1, 0] == 2 and got[0][1, 1:].eq(float("-inf")).all()


def test_half_precision_linears_give_autocasts_output_and_keep_embeddings_float32(
    model_and_batch,
):
    """Linears cast once to bf16 translate exactly as autocast's per-step casts; a tied
    output projection gets its own copy, the embedding stays float32."""
    from nmt_sd.generation.load import half_precision_linears

    _, d, net = model_and_batch
    model = TransformerModel.build_model(
        tiny_args(share_decoder_input_output_embed=True), d, d
    ).eval()
    kw = dict(beam=3, nbest=3, max_len_a=1.0, max_len_b=5, **special_ids(d))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = beam_search(model, net["src_tokens"], net["src_lengths"], **kw)
    half_precision_linears(model.requires_grad_(False), bf16=True, fp16=False)
    assert model.decoder.output_projection.weight.dtype == torch.bfloat16
    assert model.decoder.embed_tokens.weight.dtype == torch.float32
    assert model.encoder.layers[0].fc1.bias.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = beam_search(model, net["src_tokens"], net["src_lengths"], **kw)
    for hs_r, hs_g in zip(ref, got):
        assert [h["tokens"].tolist() for h in hs_r] == [
            h["tokens"].tolist() for h in hs_g
        ]
        for hr, hg in zip(hs_r, hs_g):
            assert hr["score"] == hg["score"]
