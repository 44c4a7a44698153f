"""cmlm_kd end to end: a run interrupted before or after the stage boundary and resumed
logs the same losses as the uninterrupted run; checkpoints keep a plain "model"."""

import pytest
import torch

from nmt_sd.cli import train
from nmt_sd.cli.common import run_cli
from nmt_sd.criterions.cmlm_kd import anneal
from tests.test_cli import TINY, binarize, train_log

JOINT, MAX = 3, 7
CMLM = [
    "--criterion",
    "cmlm_kd",
    "--cmlm-kd-joint-updates",
    str(JOINT),
    "--cmlm-kd-threshold",
    "0.9",
]


@pytest.mark.parametrize(
    "teacher,stop",
    [("live", 2), ("frozen", 3), ("frozen", 5)],
    ids=["live_stop_in_stage1", "frozen_stop_at_boundary", "frozen_stop_in_stage2"],
)
def test_resume_across_the_stage_boundary_reproduces_the_uninterrupted_run(
    toy_corpus, tmp_path, teacher, stop
):
    data = binarize(toy_corpus, tmp_path / "bin")
    common = [
        str(data),
        *TINY,
        *CMLM,
        "--cmlm-kd-teacher",
        teacher,
        "--log-interval",
        "1",
        "--no-epoch-checkpoints",
    ]
    train.main([*common, "--max-update", str(MAX), "--save-dir", str(tmp_path / "a")])
    # the schedule is set by --max-update: pin its length so the shorter first leg anneals alike
    pinned = ["--cmlm-kd-anneal-updates", str(MAX - JOINT)]
    # "interrupted"
    train.main(
        [*common, *pinned, "--max-update", str(stop), "--save-dir", str(tmp_path / "b")]
    )
    # resumes
    train.main(
        [*common, *pinned, "--max-update", str(MAX), "--save-dir", str(tmp_path / "b")]
    )
    a, b = train_log(tmp_path / "a"), train_log(tmp_path / "b")
    assert [r["num_updates"] for r in b] == list(range(1, MAX + 1))
    for ra, rb in zip(a, b):
        for key in ("loss", "cmlm_nll", "kd_loss", "kd_selected_frac", "kd_lambda"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), (ra["num_updates"], key)
        assert ra["gnorm"] == pytest.approx(rb["gnorm"], abs=1e-5)
        s = ra["num_updates"] - 1  # the update number the step's forward saw
        want = 0.0 if s < JOINT else anneal("linear", 1.0, 0.1, s - JOINT, MAX - JOINT)
        assert ra["kd_lambda"] == pytest.approx(want, abs=1e-6)
        assert (ra["kd_loss"] > 0) == (s >= JOINT)
        # continue-cmlm: on with live only
        assert (ra["cmlm_nll"] > 0) == (s < JOINT or teacher == "live")
    for run in ("a", "b"):
        state = torch.load(tmp_path / run / "checkpoint_last.pt", weights_only=True)
        # "model" stays a plain Transformer
        assert not [k for k in state["model"] if "cmlm" in k]
        assert state["criterion"] and all(
            k.startswith("terms.0.cmlm.") for k in state["criterion"]
        )
        assert (tmp_path / run / "checkpoint_stage1.pt").exists() == (
            teacher == "frozen"
        )


def test_cli_errors_are_one_line(toy_corpus, tmp_path, capsys):
    data = binarize(toy_corpus, tmp_path / "bin")
    for flags, msg in (
        (
            ["--cmlm-kd-gate", "lowest-k", "--cmlm-kd-lowest-k", "0"],
            "--cmlm-kd-lowest-k must be",
        ),
        (
            [
                "--cmlm-kd-teacher",
                "frozen",
                "--cmlm-kd-teacher-path",
                str(tmp_path / "no.pt"),
            ],
            "--cmlm-kd-teacher-path not found",
        ),
    ):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            run_cli(
                "nmt-sd-train",
                train.main,
                [
                    str(data),
                    *TINY,
                    *CMLM,
                    *flags,
                    "--max-update",
                    "1",
                    "--save-dir",
                    str(tmp_path / "x"),
                ],
            )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
