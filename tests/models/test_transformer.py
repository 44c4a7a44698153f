import pytest
import torch

from nmt_sd.models import TransformerModel
from tests.conftest import ragged_batch, tiny_args, tiny_dict


def build(**over):
    d = tiny_dict()
    model = TransformerModel.build_model(tiny_args(**over), d, d)
    return model.eval(), d


@pytest.mark.parametrize("prenorm", [False, True])
def test_shapes_and_fairseq_names(prenorm):
    model, d = build(encoder_normalize_before=prenorm, decoder_normalize_before=prenorm)
    b = ragged_batch(d)
    logits, extra = model(**b["net_input"])
    assert logits.shape == (3, 6, len(d))
    names = set(model.state_dict())
    for n in ("encoder.embed_tokens.weight", "encoder.layers.0.self_attn.q_proj.weight",
              "encoder.layers.0.fc1.weight", "encoder.layers.0.final_layer_norm.weight",
              "decoder.layers.1.encoder_attn.k_proj.weight", "decoder.layers.1.encoder_attn_layer_norm.bias",
              "decoder.output_projection.weight"):
        assert n in names
    assert ("encoder.layer_norm.weight" in names) == prenorm


def test_share_all_embeddings_ties_weights():
    model, _ = build(share_all_embeddings=True)
    assert model.encoder.embed_tokens.weight is model.decoder.embed_tokens.weight
    assert model.decoder.output_projection.weight is model.decoder.embed_tokens.weight


@pytest.mark.parametrize("prenorm", [False, True])
def test_incremental_equals_full_forward(prenorm):
    model, d = build(encoder_normalize_before=prenorm, decoder_normalize_before=prenorm)
    b = ragged_batch(d)
    net = b["net_input"]
    with torch.no_grad():
        full, _ = model(**net)  # (B, T, V)
        enc = model.encoder(net["src_tokens"], net["src_lengths"])
        cache = model.decoder.init_cache()
        prev = net["prev_output_tokens"]
        steps = [model.decoder(prev[:, : t + 1], enc, cache=cache)[0] for t in range(prev.size(1))]
    inc = torch.cat(steps, dim=1)
    mask = b["target"].ne(d.pad())
    torch.testing.assert_close(inc[mask], full[mask], atol=1e-5, rtol=1e-5)


def test_cache_reorder_matches_reordered_batch():
    model, d = build()
    b = ragged_batch(d)
    net = b["net_input"]
    order = torch.tensor([2, 0, 0, 1])
    with torch.no_grad():
        enc = model.encoder(net["src_tokens"], net["src_lengths"])
        cache = model.decoder.init_cache()
        prev = net["prev_output_tokens"][:, :2]
        model.decoder(prev[:, :1], enc, cache=cache)
        cache.reorder(order)
        out_a, _ = model.decoder(prev[order], model.reorder_encoder_out(enc, order), cache=cache)
        full, _ = model.decoder(prev[order], model.reorder_encoder_out(enc, order))
    torch.testing.assert_close(out_a[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


def test_padding_invariance():
    """A sentence's output does not depend on how much padding its batch adds."""
    model, d = build()
    b = ragged_batch(d)
    net = b["net_input"]
    with torch.no_grad():
        batched, _ = model(**net)
        for i, (ls, lt) in enumerate([(5, 4), (3, 6), (7, 2)]):
            alone, _ = model(net["src_tokens"][i : i + 1, :ls], net["src_lengths"][i : i + 1],
                             net["prev_output_tokens"][i : i + 1, :lt])
            torch.testing.assert_close(batched[i, :lt], alone[0], atol=1e-5, rtol=1e-5)


def test_decoder_is_causal():
    model, d = build()
    b = ragged_batch(d)
    net = dict(b["net_input"])
    with torch.no_grad():
        ref, _ = model(**net)
        prev = net["prev_output_tokens"].clone()
        prev[1, 4] = 7 if prev[1, 4] != 7 else 8
        net["prev_output_tokens"] = prev
        out, _ = model(**net)
    torch.testing.assert_close(out[1, :4], ref[1, :4])
    assert not torch.allclose(out[1, 4:], ref[1, 4:])


def test_attention_weights_path_matches_sdpa():
    model, d = build()
    b = ragged_batch(d)
    net = b["net_input"]
    with torch.no_grad():
        enc = model.encoder(net["src_tokens"], net["src_lengths"])
        a, _ = model.decoder(net["prev_output_tokens"], enc)
        w, extra = model.decoder(net["prev_output_tokens"], enc, need_attn=True)
    torch.testing.assert_close(a, w, atol=1e-5, rtol=1e-5)
    attn = extra["attn"]  # (B, T, S), rows sum to 1 and pads get 0
    torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:2]))
    assert attn[1, :, 3:].abs().max() == 0  # sentence 1 has 3 source tokens
