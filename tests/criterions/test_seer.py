"""Seer Forcing: stream alignment (no leakage), padding-aware reversal, the loss and its parts."""

import math

import pytest
import torch

from nmt_sd.criterions import objective as objective_mod, seer as seer_mod
from nmt_sd.criterions.functional import (
    label_smoothed_nll_loss,
    log_probs,
    soft_cross_entropy,
    symmetric_kl,
)
from nmt_sd.criterions.objective import Objective, Pass, run_passes
from nmt_sd.errors import NmtSdError
from nmt_sd.models import TransformerModel
from nmt_sd.options import parse_training_args
from tests.conftest import ragged_batch, tiny_args, tiny_dict
from tests.criterions.helpers import (
    assert_eval_is_label_smoothed_ce,
    loss_and_grads,
    model_and_batch,
    objective,
)


def outputs(crit, model, sample, streams=False):
    """Decoder logits (B, T, V) and seer log-probs (B, T, V) [and the seer's streams]."""
    logits, extra = model(**sample["net_input"], return_all_hiddens=True)
    term = crit.terms[0]
    if not streams:
        return logits, log_probs(term.seer_logits(model, sample, Pass(logits, extra)))
    prev = sample["net_input"]["prev_output_tokens"]
    lengths = prev.ne(term.padding_idx).sum(1)
    seer_logits, s = term.seer(
        model.decoder, extra["inner_states"][0], lengths, extra["encoder_out"], True
    )
    return seer_logits, s


def with_token(sample, i, t, tok):
    """``sample`` with target[i, t] = tok (and prev_output_tokens[i, t + 1], its input copy)."""
    target, prev = (
        sample["target"].clone(),
        sample["net_input"]["prev_output_tokens"].clone(),
    )
    target[i, t] = tok
    prev[i, t + 1] = tok
    return {
        **sample,
        "target": target,
        "net_input": {**sample["net_input"], "prev_output_tokens": prev},
    }


@pytest.mark.parametrize("pre_norm", [False, True])
def test_no_leakage_seer_sees_all_but_its_target_and_decoder_sees_only_the_past(
    pre_norm,
):
    d = tiny_dict()
    torch.manual_seed(0)
    model = TransformerModel.build_model(
        tiny_args(decoder_normalize_before=pre_norm), d, d
    ).train()
    crit, _ = objective("seer", decoder_normalize_before=pre_norm)
    b = ragged_batch(d)
    dec0, seer0 = outputs(crit, model, b)
    for i in range(b["target"].size(0)):
        n = int(b["target"][i].ne(d.pad()).sum())
        for tp in range(n - 1):  # every real token y_tp (target[n-1] is </s>)
            old = int(b["target"][i, tp])
            dec1, seer1 = outputs(
                crit, model, with_token(b, i, tp, d.nspecial + (old == d.nspecial))
            )
            for t in range(n):
                seer_diff = (seer1[i, t] - seer0[i, t]).abs().max().item()
                if t == tp:  # its own target: never seen
                    assert seer_diff < 1e-6, (i, t)
                else:  # y_<t through the past stream, y_>t through the future stream
                    assert seer_diff > 1e-4, (i, t, tp)
                if t <= tp:  # the ordinary decoder at t never sees y_>=t
                    assert (dec1[i, t] - dec0[i, t]).abs().max().item() < 1e-6, (i, t)


def test_padded_future_stream_equals_the_sentence_alone_in_a_batch(monkeypatch):
    model, b = model_and_batch(dropout=0.0)
    crit, d = objective("seer")
    full_logits, full = outputs(crit, model, b, streams=True)
    # [4, 6, 2]: sentences 0 and 2 are padded
    lengths = b["target"].ne(d.pad()).sum(1).tolist()
    for i, n in enumerate(lengths):
        alone_logits, alone = outputs(
            crit, model, ragged_batch(d, select=[i]), streams=True
        )
        assert alone["future"].shape[1] == n
        torch.testing.assert_close(
            full["future"][i, :n], alone["future"][0], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            full_logits[i, :n], alone_logits[0], atol=1e-5, rtol=1e-5
        )
        assert not full["future"][
            i, n - 2 :
        ].any()  # the last two positions and padding: zeros
    # the official code's reversal over the padded length fails this test
    monkeypatch.setattr(seer_mod, "reverse_within_length", lambda x, n: x.flip(1))
    monkeypatch.setattr(
        seer_mod,
        "realign_future",
        lambda r, n: torch.cat([r[:, :-2].flip(1), torch.zeros_like(r[:, :2])], 1),
    )
    _, buggy = outputs(crit, model, b, streams=True)
    alone = outputs(crit, model, ragged_batch(d, select=[0]), streams=True)[1]
    assert not torch.allclose(buggy["future"][0, :4], alone["future"][0], atol=1e-3)


def test_interleaved_streams_equal_the_streams_run_separately():
    """Both streams run interleaved by sentence through the shared layers (encoder
    attention grouped per sentence); the result equals each stream run on its own."""
    from nmt_sd.models.transformer import EncoderOut

    model, b = model_and_batch(dropout=0.0)
    crit, d = objective("seer")
    term = crit.terms[0]
    _, streams = outputs(crit, model, b, streams=True)
    _, extra = model(**b["net_input"], return_all_hiddens=True)
    x, enc = extra["inner_states"][0], extra["encoder_out"]
    lengths = b["net_input"]["prev_output_tokens"].ne(d.pad()).sum(1)
    run = {}
    for name, h in (
        ("past", x),
        ("future", seer_mod.reverse_within_length(x, lengths)),
    ):
        for layer in term.seer.layers[:-1]:
            h, _ = layer(h, EncoderOut(enc.out, enc.padding_mask))
        top = term.seer.layers[-1]
        run[name], _ = top._sublayer(
            h, top.self_attn_layer_norm, lambda q: top.self_attn(q, q, causal=True)
        )
    torch.testing.assert_close(streams["past"], run["past"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        streams["future"],
        seer_mod.realign_future(run["future"], lengths),
        atol=1e-5,
        rtol=1e-5,
    )


def test_soft_cross_entropy_hand_computation():
    teacher = torch.tensor([[[0.7, 0.3], [0.5, 0.5]]])
    student = torch.tensor([[[0.4, 0.6], [0.9, 0.1]]])
    pad = torch.tensor([[False, True]])
    want = -(0.7 * math.log(0.4) + 0.3 * math.log(0.6))
    assert soft_cross_entropy(
        teacher.log(), student.log(), pad
    ).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_alpha_one_and_seer_ce_weight_zero_is_label_smoothed_ce(dropout):
    model, b = model_and_batch(dropout=dropout)
    base, _ = objective()
    seer, _ = objective("seer", seer_alpha=1.0, seer_ce_weight=0.0)
    l0, g0, _ = loss_and_grads(base, model, b, seed=3)
    # the passes draw the same masks
    l1, g1, logs = loss_and_grads(seer, model, b, seed=3)
    assert l1.item() == pytest.approx(l0.item(), rel=1e-5)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-4)
    # still computed and logged
    assert float(logs["seer_nll"]) > 0 and float(logs["seer_kd"]) > 0


def test_kd_sends_no_gradient_to_the_seer_but_the_seer_ce_does():
    model, b = model_and_batch(dropout=0.0)
    kd_only, _ = objective("seer", seer_alpha=0.5, seer_ce_weight=0.0)
    _, g_kd, _ = loss_and_grads(kd_only, model, b)
    assert all(p.grad is None or not p.grad.any() for p in kd_only.parameters())
    base, _ = objective()
    # KD does reach the decoder: grads != 0.5 * CE's
    _, g_ce, _ = loss_and_grads(base, model, b)
    assert not torch.allclose(
        g_kd["decoder.output_projection.weight"],
        0.5 * g_ce["decoder.output_projection.weight"],
    )
    full, _ = objective("seer", seer_alpha=0.5, seer_ce_weight=1.0)
    loss_and_grads(full, model, b)
    assert all(p.grad is not None and p.grad.any() for p in full.parameters())


def test_finite_loss_and_gradients_reach_every_parameter_and_sample_unchanged():
    model, b = model_and_batch(dropout=0.3)
    before = {k: v.clone() for k, v in b["net_input"].items()}
    target = b["target"].clone()
    crit, _ = objective("seer", dropout=0.3)
    torch.manual_seed(2)
    loss, ss, logs = crit(model, b)
    assert math.isfinite(loss.item()) and ss == b["ntokens"]
    assert {"loss", "nll_loss", "seer_nll", "seer_kd"} <= set(logs)
    loss.backward()
    for p in [*model.parameters(), *crit.parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert all(
        torch.equal(before[k], b["net_input"][k]) for k in before
    ) and torch.equal(target, b["target"])
    # validation (eval mode): single-pass LS-CE of the ordinary decoder, no seer
    assert_eval_is_label_smoothed_ce(crit, model, b)


def test_reduce_metrics_over_two_workers_equals_the_whole_batch():
    model, b = model_and_batch(dropout=0.0)
    crit, d = objective("seer")
    whole = Objective.reduce_metrics([crit(model, b)[2]])
    parts = [
        crit(model, ragged_batch(d, select=[0, 1]))[2],
        crit(model, ragged_batch(d, select=[2]))[2],
    ]
    split = Objective.reduce_metrics(parts)
    assert set(split) == set(whole) >= {"seer_nll", "seer_kd"}
    for k in whole:
        assert split[k] == pytest.approx(whole[k], rel=1e-5), k


def test_combined_with_rdrop_is_the_sum_of_parts_on_the_same_passes(monkeypatch):
    model, b = model_and_batch(dropout=0.3)
    crit, d = objective(
        "seer", terms="rdrop", rdrop_alpha=2.0, seer_alpha=0.25, seer_dropout=0.0
    )
    torch.manual_seed(4)
    passes = run_passes(model, b["net_input"], 2, "concat", return_all_hiddens=True)
    monkeypatch.setattr(objective_mod, "run_passes", lambda *a, **k: passes)
    loss, _, logs = crit(model, b)
    tgt, pad, v = b["target"].view(-1), b["target"].eq(d.pad()), len(d)
    ce = sum(
        label_smoothed_nll_loss(p.lprobs.view(-1, v), tgt, 0.1, d.pad())[0]
        for p in passes
    )
    kl = symmetric_kl(passes[0].lprobs, passes[1].lprobs, pad)
    # seer dropout 0: deterministic
    seer_lp = log_probs(crit.terms[0].seer_logits(model, b, passes[0]))
    seer_ce = label_smoothed_nll_loss(seer_lp.view(-1, v), tgt, 0.1, d.pad())[0]
    kd = sum(soft_cross_entropy(seer_lp, p.lprobs, pad) for p in passes) / 2
    want = 0.25 * ce + 2.0 * kl + seer_ce + 0.75 * kd
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert (
        float(logs["seer_kd"]) == pytest.approx(kd.item(), rel=1e-5)
        and float(logs["rdrop_kl"]) > 0
    )


def test_criterion_name_equals_terms_flag():
    model, b = model_and_batch(dropout=0.3)
    losses = []
    for crit_name, terms in (("seer", ""), ("label_smoothed_cross_entropy", "seer")):
        torch.manual_seed(0)  # same seer initialisation
        crit, _ = objective(crit_name, terms=terms, dropout=0.3)
        torch.manual_seed(7)
        losses.append(crit(model, b)[0].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_bf16_autocast_is_finite_and_close_to_fp32():
    model, b = model_and_batch(dropout=0.0)
    crit, _ = objective("seer")
    ref = crit(model, b)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = crit(model, b)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.item(), rel=3e-2)
    loss.backward()
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32
        for p in [*model.parameters(), *crit.parameters()]
    )


def test_seer_dropout_takes_effect_and_defaults_to_the_model_dropout():
    model, b = model_and_batch(dropout=0.0)
    assert {
        l.dropout for l in objective("seer", dropout=0.3)[0].terms[0].seer.layers
    } == {0.3}
    for p, same in ((0.5, False), (0.0, True)):
        crit, _ = objective("seer", seer_dropout=p)
        assert {l.dropout for l in crit.terms[0].seer.layers} == {p}
        a, b2 = outputs(crit, model, b)[1], outputs(crit, model, b)[1]
        assert torch.equal(a, b2) == same


def test_layers_flags_errors_and_state_stays_out_of_the_model():
    model, _ = model_and_batch()
    keys = set(model.state_dict())
    crit, _ = objective("seer")
    assert len(crit.terms[0].seer.layers) == 2  # default: --decoder-layers
    assert len(objective("seer", seer_layers=1)[0].terms[0].seer.layers) == 1
    assert set(model.state_dict()) == keys  # building the seer adds nothing to "model"
    assert all(k.startswith("terms.0.seer.") for k in crit.state_dict())
    assert not {id(p) for p in crit.parameters()} & {id(p) for p in model.parameters()}
    for over in ({"seer_alpha": 1.5}, {"seer_layers": 0}, {"seer_ce_weight": -1.0}):
        with pytest.raises(NmtSdError):
            objective("seer", **over)
    args = parse_training_args(
        [
            "d",
            "--max-tokens",
            "8",
            "--max-update",
            "1",
            "--criterion",
            "seer",
            "--seer-alpha",
            "0.25",
            "--seer-layers",
            "1",
            "--seer-dropout",
            "0.2",
        ]
    )
    assert (
        args.seer_alpha,
        args.seer_layers,
        args.seer_dropout,
        args.seer_ce_weight,
    ) == (0.25, 1, 0.2, 1.0)
