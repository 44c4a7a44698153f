"""CBBGCA (cmlm_kd): the frozen stage-1 teacher, and the --cmlm-kd-* flags
(nmt_sd/criterions/cmlm_kd_config.py): one-line errors naming the flag, parsed defaults.
"""

import pytest
import torch

from nmt_sd.errors import NmtSdError
from nmt_sd.options import parse_training_args
from tests.criterions.helpers import model_and_batch
from tests.criterions.test_cmlm_kd import CMLM_DEFAULTS, cmlm


def test_frozen_teacher_is_the_stage1_snapshot_never_saved_and_rebuilt_on_resume(
    tmp_path,
):
    model, b = model_and_batch(dropout=0.0)
    over = dict(
        cmlm_kd_teacher="frozen",
        cmlm_kd_joint_updates=2,
        cmlm_kd_threshold=1.0,
        cmlm_kd_anneal="constant",
        save_dir=str(tmp_path),
    )
    torch.manual_seed(0)
    crit, _ = cmlm(**over)
    term = crit.terms[0]
    assert not term.cfg.continue_cmlm  # the default with a frozen teacher
    crit.set_num_updates(2)
    _, _, logs = crit(model, b)
    path = tmp_path / "checkpoint_stage1.pt"
    t_model, t_cmlm = term.teacher
    assert path.exists() and float(logs["kd_loss"]) > 0
    assert all(
        torch.equal(v, model.state_dict()[k]) for k, v in t_model.state_dict().items()
    )
    assert all(
        torch.equal(v, term.cmlm.state_dict()[k])
        for k, v in t_cmlm.state_dict().items()
    )
    # the teacher is not saved
    assert all(k.startswith("terms.0.cmlm.") for k in crit.state_dict())
    assert not {id(p) for p in crit.parameters()} & {
        id(p) for p in [*t_model.parameters(), *t_cmlm.parameters()]
    }
    with torch.no_grad():
        for p in [*model.parameters(), *term.cmlm.parameters()]:
            p.add_(0.01)  # training goes on: the frozen teacher does not follow
    assert not torch.equal(
        t_model.encoder.layers[0].fc1.weight, model.encoder.layers[0].fc1.weight
    )
    torch.manual_seed(0)
    # a resumed run (update 3 > 2) rebuilds the teacher from the file
    resumed, _ = cmlm(**over)
    resumed.set_num_updates(3)
    torch.manual_seed(9)
    rng = torch.get_rng_state()
    l1 = resumed(model, b)[0]
    # building the teacher leaves the RNG stream alone
    assert torch.equal(torch.get_rng_state(), rng)
    crit.set_num_updates(3)
    assert l1.item() == pytest.approx(crit(model, b)[0].item(), rel=1e-6)
    from_path, _ = cmlm(
        cmlm_kd_teacher="frozen",
        cmlm_kd_joint_updates=0,
        cmlm_kd_teacher_path=str(path),
        cmlm_kd_threshold=1.0,
        cmlm_kd_anneal="constant",
    )
    assert from_path(model, b)[0].item() == pytest.approx(l1.item(), rel=1e-6)
    path.unlink()
    lost, _ = cmlm(**over)
    lost.set_num_updates(3)
    with pytest.raises(NmtSdError, match="stage-1 teacher .* is missing"):
        lost(model, b)


@pytest.mark.parametrize(
    "over,flag",
    [
        ({"cmlm_kd_lowest_k": 0.0}, "--cmlm-kd-lowest-k"),
        ({"cmlm_kd_lowest_k": 150.0}, "--cmlm-kd-lowest-k"),
        ({"cmlm_kd_threshold": 1.5}, "--cmlm-kd-threshold"),
        ({"cmlm_kd_anneal": "step"}, "--cmlm-kd-anneal"),
        ({"cmlm_kd_gate": "top"}, "--cmlm-kd-gate"),
        ({"cmlm_kd_weight_min": 2.0}, "--cmlm-kd-weight-min"),
        (
            {"cmlm_kd_anneal": "exponential", "cmlm_kd_weight_min": 0.0},
            "--cmlm-kd-anneal exponential",
        ),
        (
            {
                "cmlm_kd_combine": "interpolate",
                "cmlm_kd_weight": 2.0,
                "cmlm_kd_weight_min": 0.1,
            },
            "--cmlm-kd-combine",
        ),
        (
            {"cmlm_kd_teacher": "frozen", "cmlm_kd_teacher_path": "/nonexistent/t.pt"},
            "--cmlm-kd-teacher-path",
        ),
        ({"cmlm_kd_teacher_path": "/nonexistent/t.pt"}, "--cmlm-kd-teacher-path"),
        (
            {"cmlm_kd_teacher": "frozen", "cmlm_kd_joint_updates": 0},
            "--cmlm-kd-teacher-path",
        ),
        ({"max_update": 0}, "--cmlm-kd-joint-updates"),
        ({"max_update": 0, "cmlm_kd_joint_updates": 5}, "--cmlm-kd-anneal-updates"),
        ({"cmlm_kd_mask_groups": 0}, "--cmlm-kd-mask-groups"),
        ({"cmlm_kd_decoder_layers": 0}, "--cmlm-kd-decoder-layers"),
    ],
)
def test_bad_flags_are_one_line_errors_naming_the_flag(over, flag):
    with pytest.raises(NmtSdError) as e:
        cmlm(**over)
    assert flag in str(e.value) and "\n" not in str(e.value)


def test_flags_parse_and_defaults(capsys):
    argv = ["d", "--max-tokens", "8", "--max-update", "100", "--criterion", "cmlm_kd"]
    args = parse_training_args(argv)
    assert {k: getattr(args, k) for k in CMLM_DEFAULTS} == CMLM_DEFAULTS
    args = parse_training_args(
        [
            *argv,
            "--cmlm-kd-gate",
            "lowest-k",
            "--cmlm-kd-lowest-k",
            "30",
            "--no-cmlm-kd-continue-cmlm",
            "--cmlm-kd-anneal",
            "cosine",
            "--terms",
            "rdrop",
        ]
    )
    assert (
        args.cmlm_kd_gate,
        args.cmlm_kd_lowest_k,
        args.cmlm_kd_continue_cmlm,
        args.cmlm_kd_anneal,
    ) == ("lowest-k", 30.0, False, "cosine")
    with pytest.raises(SystemExit):
        parse_training_args([*argv, "--cmlm-kd-anneal", "step"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cmlm-kd-anneal" in err[0]
    crit, _ = cmlm(max_update=100)
    c = crit.terms[0].cfg
    assert (
        c.joint_updates,
        c.anneal_updates,
        c.layers,
        c.mask_groups,
        c.continue_cmlm,
    ) == (50, 50, 2, 1, True)
