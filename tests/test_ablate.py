"""nmt-sd-ablate: grid parsing, statistics, and a 2 x 2 grid end to end (rerun, resume, kill)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest

from nmt_sd.ablation.grid import (
    Grid,
    TestSet as TSet,
    Variant,
    drop_options,
    grid_from_config,
    parse_variant_arg,
)
from nmt_sd.ablation.stats import bleu_metric, mean_sd, paired_bootstrap, sentence_stats
from nmt_sd.cli import ablate, train
from nmt_sd.errors import NmtSdError
from tests.test_cli import TINY, binarize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ grid


def test_drop_options_removes_flags_with_their_values():
    argv = ["--a", "1", "--b", "(0.9, 0.98)", "--c", "--d=4", "--e", "x", "y"]
    assert drop_options(argv, ["--b", "--d", "--e"]) == ["--a", "1", "--c"]


def test_variant_flags_follow_the_base_minus_removed():
    g = Grid(
        "d",
        ["--lr", "1e-3", "--bf16"],
        [Variant("a"), Variant("b", ["--lr", "5e-4"], ["--bf16"])],
        [1],
        [TSet("t", "ref")],
    )
    assert (
        g.train_flags(g.variant("b")) == ["--lr", "1e-3", "--lr", "5e-4"]
        and g.baseline == "a"
    )
    assert parse_variant_arg("rd=--criterion rdrop --rdrop-alpha 5") == Variant(
        "rd", ["--criterion", "rdrop", "--rdrop-alpha", "5"]
    )


@pytest.mark.parametrize(
    "cfg,msg",
    [
        (
            {
                "data": "d",
                "variant": [{"name": "a"}, {"name": "a"}],
                "test": [{"reference": "r"}],
            },
            "repeated",
        ),
        (
            {"data": "d", "variant": [{"name": "a b"}], "test": [{"reference": "r"}]},
            "variant name",
        ),
        (
            {
                "data": "d",
                "variant": [{"name": "a"}],
                "test": [{"reference": "r"}],
                "baseline": "z",
            },
            "--baseline",
        ),
        (
            {
                "data": "d",
                "variant": [{"name": "a", "flags": "--seed 3"}],
                "test": [{"reference": "r"}],
            },
            "--seed",
        ),
        (
            {
                "data": "d",
                "variant": [{"name": "a"}],
                "test": [{"reference": "r"}],
                "checkpoint": "avg",
            },
            "--checkpoint",
        ),
        (
            {
                "data": "d",
                "variant": [{"name": "a"}],
                "test": [{"reference": "r"}],
                "sedes": [1],
            },
            "unknown key",
        ),
        ({"data": "d", "variant": [{"name": "a"}]}, "no test set"),
    ],
)
def test_bad_grids_are_refused_with_a_clear_message(cfg, msg):
    with pytest.raises(NmtSdError, match=msg):
        grid_from_config(cfg, "g.toml")


# ------------------------------------------------------------------ statistics


def test_mean_and_sample_sd():
    m, sd = mean_sd([30.0, 31.0, 35.0])
    assert m == pytest.approx(32.0)
    assert sd == pytest.approx(((4 + 1 + 9) / 2) ** 0.5)
    assert mean_sd([7.0]) == (7.0, 0.0)


def _toy_systems():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    refs = [" ".join(rng.choice(words, size=8)) for _ in range(200)]
    # 90% exact copies
    good = [r if i % 10 else r.split(" ", 1)[1] for i, r in enumerate(refs)]
    # half of each line wrong
    bad = [" ".join(r.split()[:4] + list(rng.choice(words, size=4))) for r in refs]
    return refs, good, bad


def test_paired_bootstrap_identical_systems_p_is_one():
    refs, good, _ = _toy_systems()
    m = bleu_metric()
    s = sentence_stats(m, good, refs)
    res = paired_bootstrap(m, [s], [s], n_samples=200)
    assert res["delta"] == 0.0 and res["p"] == pytest.approx(1.0)


def test_paired_bootstrap_clearly_better_system_has_small_p():
    refs, good, bad = _toy_systems()
    m = bleu_metric()
    res = paired_bootstrap(
        m,
        [sentence_stats(m, good, refs)],
        [sentence_stats(m, bad, refs)],
        n_samples=200,
    )
    assert res["delta"] > 20 and res["p"] < 0.01 and res["ci_low"] > 0
    # seeds pooled: the delta is the difference of the seeds' mean corpus BLEU
    two = paired_bootstrap(
        m,
        [sentence_stats(m, good, refs)] * 2,
        [sentence_stats(m, bad, refs)] * 2,
        n_samples=50,
    )
    assert two["delta"] == pytest.approx(res["delta"])


# ------------------------------------------------------------------ end to end

GRID_ARGS = [
    "--variant",
    "base=",
    "--variant",
    "drop0=--dropout 0.0",
    "--seeds",
    "1",
    "2",
    "--checkpoint",
    "last",
    "--generate-flags",
    "--beam 2 --batch-size 8",
    "--bootstrap-samples",
    "50",
]


def grid_argv(data, corpus, root, max_epoch=2):
    base = " ".join(TINY) + f" --max-epoch {max_epoch} --no-epoch-checkpoints"
    return [
        str(data),
        "--base-flags",
        base,
        *GRID_ARGS,
        "--reference",
        str(corpus / "test.tgt"),
        "--save-root",
        str(root),
    ]


def commands_run(root):
    """How many child processes each run's logs recorded."""
    n = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f in ("train.log", "eval.log"):
                n += sum(
                    line.startswith("$ ") for line in open(os.path.join(dirpath, f))
                )
    return n


def test_grid_end_to_end_and_rerun_skips_finished_runs(toy_corpus, tmp_path, capsys):
    data = binarize(toy_corpus, tmp_path / "bin")
    root = tmp_path / "abl"
    ablate.main(grid_argv(data, toy_corpus, root))
    for name in (
        "report.md",
        "results_test.csv",
        "runs.csv",
        "valid_loss.png",
        "bleu_delta.png",
    ):
        assert (root / name).exists(), name
    rows = list(csv.DictReader(open(root / "results_test.csv")))
    assert [r["variant"] for r in rows] == ["base", "drop0"] and all(
        r["seeds"] == "2" for r in rows
    )
    runs = list(csv.DictReader(open(root / "runs.csv")))
    for r in rows:  # mean and sd agree with the per-run scores
        bleus = [float(x["bleu"]) for x in runs if x["variant"] == r["variant"]]
        assert float(r["bleu_mean"]) == pytest.approx(sum(bleus) / 2, abs=1e-6)
        assert float(r["bleu_sd"]) == pytest.approx(
            abs(bleus[0] - bleus[1]) / 2**0.5, abs=1e-6
        )
    assert (
        rows[0]["delta"] == "0.0"
        and 0 < float(rows[1]["p"]) <= 1
        and float(rows[1]["step_ratio"]) > 0
    )
    report = (root / "report.md").read_text()
    assert (
        "sacreBLEU signature: `nrefs:1" in report
        and "| **base** (baseline) | 2 |" in report
    )
    hours = sum(float(x["train_seconds"]) for x in runs) / 3600
    assert f"Training: {hours:.2f} core-hours over 4 runs" in report
    n = commands_run(root)
    assert n == 8  # 4 trainings + 4 translations
    ablate.main(grid_argv(data, toy_corpus, root))
    assert commands_run(root) == n  # nothing rerun
    assert "drop0" in capsys.readouterr().out
    # without matplotlib the report is still written, and says why it has no plots
    for name in ("valid_loss.png", "bleu_delta.png"):
        (root / name).unlink()
    with mock.patch.dict(sys.modules, {"matplotlib": None}):
        ablate.main(grid_argv(data, toy_corpus, root) + ["--report-only"])
    assert (
        "Plots skipped: matplotlib is not installed" in (root / "report.md").read_text()
    )
    assert not (root / "valid_loss.png").exists() and commands_run(root) == n


def test_interrupted_run_resumes_from_its_checkpoint(toy_corpus, tmp_path):
    data = binarize(toy_corpus, tmp_path / "bin")
    root = tmp_path / "abl"
    # a run stopped after epoch 1: checkpoint_last.pt but no train.done marker
    train.main(
        [
            str(data),
            *TINY,
            "--max-epoch",
            "1",
            "--no-epoch-checkpoints",
            "--seed",
            "1",
            "--save-dir",
            str(root / "base" / "seed1"),
        ]
    )
    ablate.main(
        grid_argv(data, toy_corpus, root)[:3]
        + [
            "--variant",
            "base=",
            "--seeds",
            "1",
            "--checkpoint",
            "last",
            "--generate-flags",
            "--beam 2",
            "--reference",
            str(toy_corpus / "test.tgt"),
            "--save-root",
            str(root),
        ]
    )
    valid = [
        json.loads(x)
        for x in open(root / "base" / "seed1" / "metrics.jsonl")
        if '"valid"' in x
    ]
    assert [v["epoch"] for v in valid] == [1, 2]  # epoch 1 was not trained again
    assert (root / "base" / "seed1" / "train.done").exists()


def test_killed_grid_finishes_when_rerun(toy_corpus, tmp_path):
    data = binarize(toy_corpus, tmp_path / "bin")
    root = tmp_path / "abl"
    argv = grid_argv(data, toy_corpus, root, max_epoch=4)
    cmd = [sys.executable, "-m", "nmt_sd.cli.ablate", *argv]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    first = root / "base" / "seed1" / "checkpoint_last.pt"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert first.exists(), "the grid wrote no checkpoint"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    assert not (root / "report.md").exists()
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = list(csv.DictReader(open(root / "results_test.csv")))
    assert [(r["variant"], r["seeds"]) for r in rows] == [("base", "2"), ("drop0", "2")]


def test_bad_ablate_input_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ablate.cli_main(
            [
                str(tmp_path / "nope"),
                "--variant",
                "a=",
                "--reference",
                "r",
                "--save-root",
                str(tmp_path),
            ]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
