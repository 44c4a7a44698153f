"""Beam search and greedy decoding on the real (tiny, random) Transformer."""
import pytest
import torch

from nmt_sd.generation.search import beam_search, greedy_search, special_ids
from nmt_sd.models import TransformerModel
from tests.conftest import ragged_batch, tiny_args, tiny_dict


@pytest.fixture
def model_and_batch():
    d = tiny_dict()
    model = TransformerModel.build_model(tiny_args(encoder_normalize_before=True), d, d).eval()
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
        alone = beam_search(model, net["src_tokens"][i : i + 1, :n], net["src_lengths"][i : i + 1], **kw)[0]
        assert [h["tokens"].tolist() for h in alone] == [h["tokens"].tolist() for h in batched[i]]
        for ha, hb in zip(alone, batched[i]):
            assert ha["score"] == pytest.approx(hb["score"], abs=1e-5)


def test_beam_scores_are_model_log_probs(model_and_batch):
    """Positional scores equal the full forward pass's log-probs of the chosen tokens."""
    model, d, net = model_and_batch
    hyps = beam_search(model, net["src_tokens"][:1, :5], net["src_lengths"][:1], beam=3,
                       max_len_a=0, max_len_b=6, lenpen=0.0, **special_ids(d))
    tokens = hyps[0][0]["tokens"]
    prev = torch.cat([torch.tensor([d.eos()]), tokens[:-1]]).unsqueeze(0)
    with torch.no_grad():
        logits, _ = model(net["src_tokens"][:1, :5], net["src_lengths"][:1], prev)
    lp = torch.log_softmax(logits.float(), -1)[0].gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(hyps[0][0]["positional_scores"], lp, atol=1e-5, rtol=1e-5)
    assert hyps[0][0]["score"] == pytest.approx(lp.sum().item(), abs=1e-4)


@pytest.mark.parametrize("beam", [3, 5])
def test_grouped_cross_attention_equals_repeated_encoder_rows(model_and_batch, beam, monkeypatch):
    """One encoder row per sentence (beams grouped in cross-attention) gives the same
    hypotheses, scores and attention as the encoder output repeated per beam."""
    model, d, net = model_and_batch
    kw = dict(beam=beam, nbest=beam, max_len_a=1.0, max_len_b=5, return_attn=True, **special_ids(d))
    grouped = beam_search(model, net["src_tokens"], net["src_lengths"], **kw)
    monkeypatch.setattr(type(model.decoder), "groups_beam_rows", False)
    repeated = beam_search(model, net["src_tokens"], net["src_lengths"], **kw)
    for hs_g, hs_r in zip(grouped, repeated):
        assert [h["tokens"].tolist() for h in hs_g] == [h["tokens"].tolist() for h in hs_r]
        for hg, hr in zip(hs_g, hs_r):
            assert hg["score"] == pytest.approx(hr["score"], abs=1e-5)
            torch.testing.assert_close(hg["attention"], hr["attention"], atol=1e-5, rtol=1e-5)
