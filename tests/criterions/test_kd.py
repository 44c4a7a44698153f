"""Teacher-student KD term: hand computations (logit KD with T and T^2, hidden/attention
MSE with a projection), the four criterion invariants, a frozen unsaved teacher, layer
maps, bf16, and the combination with R-Drop."""

import math

import numpy as np
import pytest
import torch

from nmt_sd.criterions import objective as objective_mod
from nmt_sd.criterions.functional import kd_kl, label_smoothed_nll_loss, symmetric_kl
from nmt_sd.criterions.kd_teacher import parse_layer_map, uniform_layer_map
from nmt_sd.criterions.objective import Objective, Pass
from nmt_sd.errors import NmtSdError
from nmt_sd.models import TransformerModel
from nmt_sd.training.checkpoint import plain_args
from tests.conftest import ragged_batch, tiny_args, tiny_dict
from tests.criterions.helpers import loss_and_grads, model_and_batch, objective

# a deeper, wider teacher
WIDE = dict(
    encoder_layers=3,
    decoder_layers=3,
    encoder_embed_dim=24,
    decoder_embed_dim=24,
    encoder_ffn_embed_dim=48,
    decoder_ffn_embed_dim=48,
)


def save_teacher(path, d=None, seed=11, **over):
    args = tiny_args(**over)
    torch.manual_seed(seed)
    teacher = TransformerModel.build_model(args, d or tiny_dict(), d or tiny_dict())
    torch.save(
        {
            "model": teacher.state_dict(),
            "args": {**plain_args(args), "arch": "transformer"},
        },
        path,
    )
    return str(path)


@pytest.fixture
def teacher_path(tmp_path):
    return save_teacher(tmp_path / "teacher.pt", **WIDE)


def kd(teacher_path, criterion="kd", terms="", **over):
    """The objective with the kd term and the tiny student's model args."""
    return objective(
        criterion, terms, **{**vars(tiny_args()), "teacher_path": teacher_path, **over}
    )[0]


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_kd_kl_hand_computation_at_t1_and_t4():
    # one real token and one pad, V = 2; log-probs at temperature T
    zs, zt = (
        torch.tensor([[[1.0, 0.0], [3.0, 1.0]]]),
        torch.tensor([[[0.0, 2.0], [0.0, 0.0]]]),
    )
    pad = torch.tensor([[False, True]])
    for temp in (1.0, 4.0):
        p = [
            math.exp(1 / temp) / (math.exp(1 / temp) + 1),
            1 / (math.exp(1 / temp) + 1),
        ]
        q = [
            1 / (1 + math.exp(2 / temp)),
            math.exp(2 / temp) / (1 + math.exp(2 / temp)),
        ]
        want = q[0] * math.log(q[0] / p[0]) + q[1] * math.log(q[1] / p[1])
        got = kd_kl(
            torch.log_softmax(zs / temp, -1), torch.log_softmax(zt / temp, -1), pad
        )
        assert got.item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_term_matches_hand_computation_including_t_squared(teacher_path, temp):
    alpha, eps = 0.7, 0.1
    crit = kd(teacher_path, kd_alpha=alpha, kd_temperature=temp)
    model, b = model_and_batch(dropout=0.0)
    loss, _, logs = crit(model, b)
    teacher = crit.terms[0].teacher
    with torch.no_grad():
        zs = model(**b["net_input"])[0].double().numpy()  # (B, T, V)
        zt = teacher(**b["net_input"])[0].double().numpy()
    tgt, pad = b["target"].numpy(), tiny_dict().pad()
    vocab = zs.shape[-1]
    ce = kl = 0.0
    for i, j in zip(
        *np.nonzero(tgt != pad)
    ):  # fairseq's LS-CE and KL(q_T || p_T), token by token
        lp = np_log_softmax(zs[i, j])
        ce += (1 - eps - eps / (vocab - 1)) * -lp[tgt[i, j]] + eps / (
            vocab - 1
        ) * -lp.sum()
        lp_t, lq_t = np_log_softmax(zs[i, j] / temp), np_log_softmax(zt[i, j] / temp)
        kl += (np.exp(lq_t) * (lq_t - lp_t)).sum()
    assert float(logs["kd_loss"]) == pytest.approx(kl, rel=1e-5)
    assert loss.item() == pytest.approx(
        (1 - alpha) * ce + alpha * temp**2 * kl, rel=1e-5
    )


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_alpha_zero_equals_label_smoothed_ce(teacher_path, temp):
    model, b = model_and_batch(dropout=0.0)
    l0, g0, _ = loss_and_grads(objective()[0], model, b)
    l1, g1, logs = loss_and_grads(
        kd(teacher_path, kd_alpha=0.0, kd_temperature=temp), model, b
    )
    assert l1.item() == pytest.approx(l0.item(), rel=1e-6)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-5)
    assert float(logs["kd_loss"]) > 0


def test_teacher_is_frozen_and_never_saved_or_optimised(teacher_path):
    crit = kd(
        teacher_path, kd_hidden_weight=1.0, kd_attn_weight=1.0, kd_temperature=2.0
    )
    teacher = crit.terms[0].teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert set(crit.state_dict()) == {
        f"terms.0.proj.{s}.{w}" for s in ("enc", "dec") for w in ("weight", "bias")
    }
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in crit.parameters()}
    model, b = model_and_batch(dropout=0.3)
    crit.train()
    loss, _, _ = crit(model, b)
    loss.backward()
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_invariants_gradients_sample_and_validation(teacher_path):
    crit = kd(
        teacher_path, kd_hidden_weight=1.0, kd_attn_weight=1.0, kd_temperature=2.0
    )
    model, b = model_and_batch(dropout=0.3)
    before = {k: v.clone() for k, v in b["net_input"].items()}
    target = b["target"].clone()
    loss, _, logs = crit(model, b)
    assert math.isfinite(loss.item()) and {"kd_loss", "kd_hidden", "kd_attn"} <= set(
        logs
    )
    loss.backward()
    for name, p in [
        *model.named_parameters(),
        *crit.named_parameters(),
    ]:  # incl. the projections
        assert (
            p.grad is not None
            and torch.isfinite(p.grad).all()
            and p.grad.abs().sum() > 0
        ), name
    assert all(
        torch.equal(before[k], b["net_input"][k]) for k in before
    ) and torch.equal(target, b["target"])
    crit.eval()
    model.eval()
    base = objective()[0].eval()
    # validation: LS-CE
    assert crit(model, b)[0].item() == pytest.approx(base(model, b)[0].item(), rel=1e-6)


def test_reduce_metrics_of_two_workers_equals_the_whole_batch(teacher_path):
    crit = kd(
        teacher_path, kd_hidden_weight=1.0, kd_attn_weight=1.0, kd_temperature=2.0
    )
    model, _ = model_and_batch(dropout=0.0)
    d = tiny_dict()
    whole = Objective.reduce_metrics([crit(model, ragged_batch(d))[2]])
    split = Objective.reduce_metrics(
        [crit(model, ragged_batch(d, select=s))[2] for s in ([0, 1], [2])]
    )
    for key in ("loss", "nll_loss", "kd_loss", "kd_hidden", "kd_attn"):
        assert split[key] == pytest.approx(whole[key], rel=1e-5), key


def test_hidden_and_attention_mse_with_projection_match_hand_computation(teacher_path):
    spec = "enc:1-2,2-3;dec:2-3"
    crit = kd(
        teacher_path,
        kd_alpha=0.0,
        kd_hidden_weight=1.0,
        kd_attn_weight=1.0,
        kd_layer_map=spec,
    )
    term = crit.terms[0]
    model, b = model_and_batch(dropout=0.0)
    loss, _, logs = crit(model, b)
    with torch.no_grad():
        _, s = model(**b["net_input"], return_all_hiddens=True, need_attn=True)
        _, t = term.teacher(**b["net_input"], return_all_hiddens=True, need_attn=True)
    pad = {
        "enc": b["net_input"]["src_tokens"].eq(1).numpy(),
        "dec": b["target"].eq(1).numpy(),
    }
    w = {
        side: (
            term.proj[side].weight.detach().double().numpy(),
            term.proj[side].bias.detach().double().numpy(),
        )
        for side in ("enc", "dec")
    }
    hid = {
        "enc": lambda x, i: x["encoder_states"][i - 1],
        "dec": lambda x, i: x["inner_states"][i],
    }
    att = {
        "enc": ["encoder_self_attns"],
        "dec": ["decoder_self_attns", "decoder_cross_attns"],
    }
    h_terms, a_terms = [], []
    for side, pairs in (("enc", [(1, 2), (2, 3)]), ("dec", [(2, 3)])):
        keep = ~pad[side]
        for i, j in pairs:
            hs, ht = hid[side](s, i).double().numpy(), hid[side](t, j).double().numpy()
            proj = hs @ w[side][0].T + w[side][1]  # (B, T, 24)
            h_terms.append((((proj - ht) ** 2).mean(-1) * keep).sum())
            for key in att[side]:
                a_s, a_t = (
                    s[key][i - 1].double().numpy(),
                    t[key][j - 1].double().numpy(),
                )
                a_terms.append((((a_s - a_t) ** 2).sum(-1) * keep).sum())
    # 3 pairs
    assert float(logs["kd_hidden"]) == pytest.approx(np.mean(h_terms), rel=1e-5)
    # 2 + 2 maps
    assert float(logs["kd_attn"]) == pytest.approx(np.mean(a_terms), rel=1e-5)
    assert loss.item() == pytest.approx(
        objective()[0](model, b)[0].item() + np.mean(h_terms) + np.mean(a_terms),
        rel=1e-5,
    )


def test_no_projection_when_widths_match(tmp_path):
    path = save_teacher(tmp_path / "t.pt", encoder_layers=4, decoder_layers=4)
    crit = kd(path, kd_hidden_weight=1.0)
    assert len(list(crit.parameters())) == 0 and crit.terms[0].layer_map == {
        "enc": [(1, 2), (2, 4)],
        "dec": [(1, 2), (2, 4)],
    }


def test_layer_maps_parse_and_reject_bad_input_in_one_line():
    n_s, n_t = {"enc": 3, "dec": 2}, {"enc": 6, "dec": 3}
    assert uniform_layer_map(n_s, n_t) == {
        "enc": [(1, 2), (2, 4), (3, 6)],
        "dec": [(1, 2), (2, 3)],
    }
    assert uniform_layer_map({"enc": 3, "dec": 3}, {"enc": 1, "dec": 1})["enc"] == [
        (1, 1),
        (2, 1),
        (3, 1),
    ]
    assert parse_layer_map(" enc:1-2, 3-6 ; dec:2-3", n_s, n_t, "--x") == {
        "enc": [(1, 2), (3, 6)],
        "dec": [(2, 3)],
    }
    bad = {
        "enc:1-7": "enc teacher layer 7 out of range 1..6",
        "dec:3-1": "dec student layer 3 out of range 1..2",
        "enc:0-1": "student layer 0 out of range",
        "ffn:1-2": "bad or repeated side 'ffn'",
        "enc:1-2;enc:2-4": "repeated side",
        "enc:1to2": "cannot parse '1to2'",
        "enc:1-2,1-4": "mapped twice",
        "enc:": "no layer pairs",
        "enc:1-2-3": "cannot parse",
    }
    for spec, msg in bad.items():
        with pytest.raises(NmtSdError, match=msg) as e:
            parse_layer_map(spec, n_s, n_t, "--kd-layer-map")
        assert "\n" not in str(e.value) and str(e.value).startswith("--kd-layer-map: ")


def test_term_flag_errors(teacher_path, tmp_path):
    with pytest.raises(
        NmtSdError, match="out of range 1..2"
    ):  # the student has 2 layers
        kd(teacher_path, kd_layer_map="enc:3-3")
    with pytest.raises(NmtSdError, match="needs --teacher-path"):
        kd(None)
    with pytest.raises(NmtSdError, match="--kd-alpha must be in"):
        kd(teacher_path, kd_alpha=1.5)
    other = save_teacher(tmp_path / "other.pt", d=tiny_dict(28))
    with pytest.raises(
        NmtSdError,
        match="teacher's source dictionary has 33 symbols but the student's has 25",
    ):
        kd(other)
    with pytest.raises(NmtSdError, match="checkpoint not found"):
        kd(str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_works_under_bf16_autocast(teacher_path, temp):
    crit = kd(
        teacher_path, kd_temperature=temp, kd_hidden_weight=1.0, kd_attn_weight=1.0
    )
    model, b = model_and_batch(dropout=0.0)
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


def test_criterion_name_equals_terms_flag(teacher_path):
    model, b = model_and_batch(dropout=0.3)
    losses = []
    for crit in (
        kd(teacher_path, kd_temperature=2.0),
        kd(teacher_path, "label_smoothed_cross_entropy", "kd", kd_temperature=2.0),
    ):
        torch.manual_seed(7)
        losses.append(crit(model, b)[0].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


@pytest.mark.parametrize("temp", [1.0, 3.0])
def test_with_rdrop_teacher_runs_once_and_loss_is_the_sum_of_parts(
    teacher_path, monkeypatch, temp
):
    alpha, r_alpha = 0.4, 2.0
    crit = kd(
        teacher_path,
        "rdrop",
        "kd",
        kd_alpha=alpha,
        kd_temperature=temp,
        rdrop_alpha=r_alpha,
    )
    model, b = model_and_batch(dropout=0.3)
    torch.manual_seed(4)
    passes = [Pass(model(**b["net_input"])[0]) for _ in range(2)]
    monkeypatch.setattr(objective_mod, "run_passes", lambda *a, **k: passes)
    teacher, calls = crit.terms[1].teacher, []
    real_forward = teacher.forward
    monkeypatch.setattr(
        teacher, "forward", lambda *a, **k: calls.append(1) or real_forward(*a, **k)
    )
    loss, _, logs = crit(model, b)
    # the teacher runs once per batch, whatever the number of passes
    assert len(calls) == 1
    d, pad = tiny_dict(), b["target"].eq(1)
    with torch.no_grad():
        t_lp = torch.log_softmax(real_forward(**b["net_input"])[0] / temp, -1)
    ce = sum(
        label_smoothed_nll_loss(
            p.lprobs.view(-1, len(d)), b["target"].view(-1), 0.1, 1
        )[0]
        for p in passes
    )
    # mean over passes
    kl = (
        sum(kd_kl(torch.log_softmax(p.logits / temp, -1), t_lp, pad) for p in passes)
        / 2
    )
    want = (
        (1 - alpha) * ce
        + r_alpha * symmetric_kl(passes[0].lprobs, passes[1].lprobs, pad)
        + alpha * temp**2 * kl
    )
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert (
        float(logs["kd_loss"]) == pytest.approx(kl.item(), rel=1e-5)
        and "rdrop_kl" in logs
    )
