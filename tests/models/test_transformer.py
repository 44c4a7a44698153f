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
    for n in (
        "encoder.embed_tokens.weight",
        "encoder.layers.0.self_attn.q_proj.weight",
        "encoder.layers.0.fc1.weight",
        "encoder.layers.0.final_layer_norm.weight",
        "decoder.layers.1.encoder_attn.k_proj.weight",
        "decoder.layers.1.encoder_attn_layer_norm.bias",
        "decoder.output_projection.weight",
    ):
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
        steps = [
            model.decoder(prev[:, : t + 1], enc, cache=cache)[0]
            for t in range(prev.size(1))
        ]
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
        out_a, _ = model.decoder(
            prev[order], model.reorder_encoder_out(enc, order), cache=cache
        )
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
            alone, _ = model(
                net["src_tokens"][i : i + 1, :ls],
                net["src_lengths"][i : i + 1],
                net["prev_output_tokens"][i : i + 1, :lt],
            )
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


@pytest.mark.parametrize(
    "causal,padded,tq",
    [(False, False, 5), (True, False, 5), (False, True, 3), (True, True, 5)],
)
def test_explicit_attention_equals_sdpa(causal, padded, tq):
    """The explicit CPU attention equals torch's fused kernel (float64, no dropout)."""
    from nmt_sd.models.transformer import explicit_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(2, 3, t, 4, generator=g, dtype=torch.float64) for t in (tq, 5, 5)
    )
    mask = None
    if padded:
        mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
        mask[1, ..., 3:] = False
    is_causal = causal and mask is None  # SDPA takes one or the other
    ref_mask = mask
    if causal and mask is not None:
        ref_mask = mask & torch.ones(tq, 5, dtype=torch.bool).tril(5 - tq)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=ref_mask, is_causal=is_causal
    )
    out, probs = explicit_attention(q, k, v, mask, causal, 0.0, False)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, tq, dtype=torch.float64))


def test_dropout_rate_scale_and_gradient():
    from nmt_sd.models.dropout import dropout

    torch.manual_seed(0)
    scale = 32768 / (32768 - 9830)  # p 0.3 rounded to 9830 / 2^15
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.ones(200, 500, dtype=dtype, requires_grad=True)
        y = dropout(x, 0.3, True)
        kept = y.ne(0)
        assert abs(kept.float().mean().item() - 0.7) < 0.01
        torch.testing.assert_close(
            y[kept].float(), torch.full_like(y[kept], scale).float()
        )
        y.float().sum().backward()
        torch.testing.assert_close(
            x.grad, ((y.detach() != 0).float() * scale).to(dtype)
        )
        assert dropout(x, 0.3, False) is x


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_cpu_dropout_mask_is_uniform_over_positions_and_unbiased(p):
    """Every lane of the 64-bit draws keeps at rate 1 - p, neighbours are independent, and
    E[dropout(x)] = x; p that rounds to 1 drops everything."""
    from nmt_sd.models.dropout import _cpu_keep_mask, dropout

    torch.manual_seed(1)
    # 262,144 = 65,536 draws x 4 lanes
    keep, scale = _cpu_keep_mask((4096, 64), p, "cpu")
    assert keep.dtype == torch.int16 and set(keep.unique().tolist()) <= {0, 1}
    lanes = keep.view(-1, 4).double()
    sd = (p * (1 - p) / lanes.size(0)) ** 0.5
    assert (lanes.mean(0) - (1 - p)).abs().max() < 5 * sd  # each lane position
    both = (lanes[:, 0] * lanes[:, 1]).mean()
    assert abs(both - (1 - p) ** 2) < 5 * sd
    assert abs(scale * (1 - round(p * 32768) / 32768) - 1.0) < 1e-12
    x = torch.ones(4096, 64)
    assert abs(dropout(x, p, True).mean().item() - 1.0) < 5 * sd * scale
    assert dropout(x, 0.99999, True).eq(0).all()


def test_frozen_fused_projections_are_concatenated_once_and_follow_weight_changes(
    monkeypatch,
):
    """A frozen model (inference, teachers) keeps its fused q/k/v weights between calls;
    an in-place weight change (a teacher update) rebuilds them; a trainable model never
    keeps them."""
    from nmt_sd.models import transformer as tr

    torch.manual_seed(0)
    attn = tr.MultiheadAttention(8, 2).requires_grad_(False)
    x = torch.randn(2, 3, 8)
    cats = []
    real_cat = torch.cat
    monkeypatch.setattr(
        tr.torch, "cat", lambda *a, **k: cats.append(1) or real_cat(*a, **k)
    )
    with torch.inference_mode():
        out1, _ = attn(x, x)
        out2, _ = attn(x, x)
    assert len(cats) == 2  # weights and biases, once
    torch.testing.assert_close(out1, out2)
    with torch.no_grad():
        attn.k_proj.weight.mul_(2.0)
    out3, _ = attn(x, x)  # outside inference mode: the kept tensors are normal ones
    assert len(cats) == 4
    ref = tr.MultiheadAttention(8, 2)
    ref.load_state_dict(attn.state_dict())
    torch.testing.assert_close(out3, ref(x, x)[0].detach())
    cats.clear()
    ref(x, x)
    ref(x, x)
    assert len(cats) == 4  # trainable: concatenated at every call
