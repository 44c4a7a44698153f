"""End-to-end CLI: preprocess -> train -> generate -> score, resume, DDP, bad inputs."""

import io
import json
import os
import subprocess
import sys

import pytest
import torch

from nmt_sd.cli import (
    average_checkpoints,
    generate,
    interactive,
    preprocess,
    score,
    train,
)

TINY = [
    "--arch",
    "transformer_cpu",
    "--encoder-layers",
    "1",
    "--decoder-layers",
    "1",
    "--encoder-embed-dim",
    "32",
    "--decoder-embed-dim",
    "32",
    "--encoder-ffn-embed-dim",
    "64",
    "--decoder-ffn-embed-dim",
    "64",
    "--encoder-attention-heads",
    "2",
    "--decoder-attention-heads",
    "2",
    "--share-all-embeddings",
    "--optimizer",
    "adam",
    "--lr",
    "3e-3",
    "--lr-scheduler",
    "inverse_sqrt",
    "--warmup-updates",
    "5",
    "--label-smoothing",
    "0.1",
    "--dropout",
    "0.3",
    "--max-tokens",
    "64",
    "--log-format",
    "simple",
    "--num-threads",
    "1",
]


def binarize(corpus, dest):
    preprocess.main(
        [
            "-s",
            "src",
            "-t",
            "tgt",
            "--trainpref",
            str(corpus / "train"),
            "--validpref",
            str(corpus / "valid"),
            "--testpref",
            str(corpus / "test"),
            "--destdir",
            str(dest),
            "--joined-dictionary",
        ]
    )
    return dest


def train_log(save_dir):
    rows = [json.loads(x) for x in open(os.path.join(save_dir, "metrics.jsonl"))]
    return [r for r in rows if r["type"] == "train_inner"]


def test_end_to_end(toy_corpus, tmp_path, capsys):
    data = binarize(toy_corpus, tmp_path / "bin")
    assert (data / "dict.src.txt").exists()
    assert (data / "train.src-tgt.tgt.idx").exists()
    save, avg, gen = tmp_path / "ck", tmp_path / "avg.pt", tmp_path / "gen"
    bleu = "--eval-bleu --eval-bleu-remove-bpe none --best-checkpoint-metric bleu"
    flags = f"--max-epoch 3 --save-dir {save} --log-interval 1 {bleu}"
    train.main([str(data), *TINY, *flags.split(), "--maximize-best-checkpoint-metric"])
    valid = [json.loads(x) for x in open(save / "metrics.jsonl") if '"valid"' in x]
    assert len(valid) == 3 and all(0 <= r["bleu"] <= 100 for r in valid)
    for name in ("checkpoint1.pt", "checkpoint3.pt", "checkpoint_best.pt"):
        assert (save / name).exists()
    state = torch.load(save / "checkpoint_last.pt", weights_only=True)
    assert state["args"]["arch"] == "transformer_cpu"
    assert state["extra_state"]["train_iterator"]["epoch"] == 3
    argv = f"--inputs {save} --num-epoch-checkpoints 2 --output {avg}"
    average_checkpoints.main(argv.split())
    capsys.readouterr()
    argv = f"{data} --path {avg} --beam 2 --nbest 2 --batch-size 4 --results-path"
    generate.main([*argv.split(), str(gen)])
    assert "sacreBLEU signature: nrefs:1" in capsys.readouterr().out
    lines = (gen / "generate-test.txt").read_text().splitlines()
    expected = {"S-": 6, "T-": 6, "H-": 12, "D-": 12, "P-": 12}  # 6 sentences, nbest 2
    for prefix, n in expected.items():
        assert sum(x.startswith(prefix) for x in lines) == n, prefix
    assert len((gen / "test.hyp.detok").read_text().splitlines()) == 6
    generate.main([*argv.split(), str(tmp_path / "gen2"), "--inter-threads", "2"])
    for name in ("generate-test.txt", "test.hyp.detok"):  # 2 processes: same output
        assert (tmp_path / "gen2" / name).read_text() == (gen / name).read_text()
    score.main(
        ["--sys", str(gen / "test.hyp.detok"), "--ref", str(toy_corpus / "test.tgt")]
    )
    assert "sacreBLEU signature" in capsys.readouterr().out
    # interactive mode: stdin lines in, S-/H-/D-/P- lines out, same output as generate
    first_src = (toy_corpus / "test.src").read_text().splitlines()[0]
    old, sys.stdin = sys.stdin, io.StringIO(first_src + "\n")
    try:
        interactive.main([str(data), "--path", str(avg), "--beam", "2"])
    finally:
        sys.stdin = old
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"S-0\t{first_src}" and out[1].startswith("H-0\t")
    assert out[3].startswith("P-0\t")
    gen_h = next(x for x in lines if x.startswith("H-0\t"))
    assert out[1].split("\t")[2] == gen_h.split("\t")[2]  # the hypothesis of generate


CRITERIA = {
    "ls_ce": [],
    "rdrop": ["--criterion", "rdrop", "--rdrop-alpha", "5"],
    "intra": [
        "--criterion",
        "intra_distillation",
        "--intra-k",
        "3",
        "--intra-alpha",
        "5",
        "--intra-adaptive",
        "--intra-max-updates",
        "14",
    ],  # pinned: the legs below differ in --max-update
    "seer": ["--criterion", "seer", "--seer-alpha", "0.5"],
}


@pytest.mark.parametrize("crit", sorted(CRITERIA))
def test_resume_reproduces_uninterrupted_run(toy_corpus, tmp_path, crit):
    data = binarize(toy_corpus, tmp_path / "bin")
    common = [
        str(data),
        *TINY,
        *CRITERIA[crit],
        "--log-interval",
        "1",
        "--no-epoch-checkpoints",
    ]
    train.main([*common, "--max-update", "14", "--save-dir", str(tmp_path / "a")])
    # "interrupted"
    train.main([*common, "--max-update", "5", "--save-dir", str(tmp_path / "b")])
    # resumes
    train.main([*common, "--max-update", "14", "--save-dir", str(tmp_path / "b")])
    a, b = train_log(tmp_path / "a"), train_log(tmp_path / "b")
    assert [r["num_updates"] for r in b] == list(range(1, 15))
    n_batches = torch.load(tmp_path / "a" / "checkpoint_last.pt", weights_only=True)[
        "extra_state"
    ]
    # the run crossed an epoch boundary
    assert n_batches["train_iterator"]["epoch"] >= 2
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6), ra["num_updates"]
        assert ra["gnorm"] == pytest.approx(rb["gnorm"], abs=1e-5)
    term_key = {"rdrop": "rdrop_kl", "intra": "intra_x", "seer": "seer_kd"}.get(crit)
    if term_key:  # every term's metric is logged
        assert all(term_key in r for r in a) and a[-1][term_key] > 0


@pytest.mark.parametrize(
    "extra",
    [[], ["--terms", "rdrop", "--rdrop-alpha", "5"]],
    ids=["alone", "with_rdrop"],
)
def test_seer_checkpoint_is_a_plain_transformer_that_translates(
    toy_corpus, tmp_path, capsys, extra
):
    data = binarize(toy_corpus, tmp_path / "bin")
    save = tmp_path / "ck"
    train.main(
        [
            str(data),
            *TINY,
            *CRITERIA["seer"],
            *extra,
            "--max-update",
            "4",
            "--save-dir",
            str(save),
            "--log-interval",
            "1",
            "--no-epoch-checkpoints",
        ]
    )
    rows = train_log(save)
    assert len(rows) == 4 and all(r["seer_kd"] > 0 and r["seer_nll"] > 0 for r in rows)
    assert all(("rdrop_kl" in r) == bool(extra) for r in rows)
    state = torch.load(save / "checkpoint_last.pt", weights_only=True)
    # the seer lives in "criterion" only
    assert not [k for k in state["model"] if "seer" in k]
    assert any(k.startswith("terms.0.seer.") for k in state["criterion"])
    capsys.readouterr()
    generate.main(
        [
            str(data),
            "--path",
            str(save / "checkpoint_last.pt"),
            "--beam",
            "2",
            "--batch-size",
            "4",
            "--results-path",
            str(tmp_path / "gen"),
        ]
    )
    assert "sacreBLEU signature" in capsys.readouterr().out
    lines = (tmp_path / "gen" / "generate-test.txt").read_text().splitlines()
    assert sum(x.startswith("H-") for x in lines) == 6


@pytest.mark.parametrize("crit,port", [("ls_ce", 29531), ("intra", 29532)])
def test_two_process_ddp_on_cpu(toy_corpus, tmp_path, crit, port):
    data = binarize(toy_corpus, tmp_path / "bin")
    save = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "nmt_sd.cli.train",
        str(data),
        *TINY,
        *CRITERIA[crit],
        "--max-update",
        "6",
        "--save-dir",
        str(save),
        "--log-interval",
        "1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (proc.stdout + proc.stderr).count(
        "world size: 2"
    ) == 1  # rank 1 logs warnings only
    rows = train_log(save)
    assert [r["num_updates"] for r in rows] == list(range(1, 7))  # only rank 0 logs
    assert (save / "checkpoint_last.pt").exists()
    # each update holds two shards' batches: more tokens than any single batch of <= 64
    assert all(r["wpb"] > 0 for r in rows)
    state = torch.load(save / "checkpoint_last.pt", weights_only=True)
    assert state["num_updates"] == 6


def run_cli_subprocess(module, *args):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in err[0], err[0]


def test_bad_corpora_end_in_one_line(toy_corpus, tmp_path):
    files = {
        "bad": ("a b\nc d\n", "a b\n"),
        "empty": ("", ""),
        "utf": (b"ok\n\xff\xfe bad\n", "ok\nok\n"),
    }
    for name, (src, tgt) in files.items():
        for side, text in (("src", src), ("tgt", tgt)):
            path = toy_corpus / f"{name}.{side}"
            path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    expected = {
        "bad": ("misaligned", "bad.src has 2 lines", "bad.tgt has 1 lines"),
        "nope": ("not found", "nope.src"),
        "empty": ("empty training corpus",),
        "utf": ("utf.src:2", "invalid UTF-8"),
    }
    for name, needles in expected.items():
        argv = f"-s src -t tgt --trainpref {toy_corpus / name} --destdir {tmp_path}/x"
        p = run_cli_subprocess("nmt_sd.cli.preprocess", *argv.split())
        assert_one_line_error(p, *needles)


def test_bad_flags_and_checkpoints_end_in_one_line(toy_corpus, tmp_path):
    data = binarize(toy_corpus, tmp_path / "bin")
    limits = "--max-tokens 64 --max-update 1".split()
    for flags, needles in {
        "--arch transformer_tiny_nope": ("unknown --arch", "transformer_tiny_nope"),
        "--criterion nope_ce": ("unknown criterion", "nope_ce"),
        "--no-such-flag": ("--no-such-flag",),
    }.items():
        p = run_cli_subprocess("nmt_sd.cli.train", str(data), *flags.split(), *limits)
        assert_one_line_error(p, *needles)
    p = run_cli_subprocess("nmt_sd.cli.train", str(tmp_path / "missing_dir"), *limits)
    assert_one_line_error(p, "data directory not found", "missing_dir")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    p = run_cli_subprocess("nmt_sd.cli.generate", str(data), "--path", str(corrupt))
    assert_one_line_error(p, "cannot read checkpoint", "corrupt.pt")
    save = tmp_path / "ck"
    train.main([str(data), *TINY, "--max-update", "1", "--save-dir", str(save)])
    ckpt = str(save / "checkpoint_last.pt")
    other = tmp_path / "bin2"
    (toy_corpus / "other.src").write_text("x y z\n" * 5)
    (toy_corpus / "other.tgt").write_text("u v w q\n" * 5)
    pref = toy_corpus / "other"
    argv = f"-s src -t tgt --trainpref {pref} --testpref {pref} --destdir {other}"
    preprocess.main([*argv.split(), "--joined-dictionary", "--padding-factor", "1"])
    p = run_cli_subprocess("nmt_sd.cli.generate", str(other), "--path", ckpt)
    assert_one_line_error(p, "does not match the model", "checkpoint_last.pt")
    argv = [str(data), "--path", ckpt, "--inter-threads", "0"]
    p = run_cli_subprocess("nmt_sd.cli.generate", *argv)
    assert_one_line_error(p, "--inter-threads must be >= 1")
