"""End-to-end CLI: preprocess -> train -> generate -> score, resume, DDP, bad inputs."""
import json
import os
import subprocess
import sys

import pytest
import torch

import io

from nmt_sd.cli import average_checkpoints, generate, interactive, preprocess, score, train

TINY = ["--arch", "transformer_cpu", "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
        "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
        "--share-all-embeddings", "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt",
        "--warmup-updates", "5", "--label-smoothing", "0.1", "--dropout", "0.3", "--max-tokens", "64",
        "--log-format", "simple", "--num-threads", "1"]


def binarize(corpus, dest):
    preprocess.main(["-s", "src", "-t", "tgt", "--trainpref", str(corpus / "train"),
                     "--validpref", str(corpus / "valid"), "--testpref", str(corpus / "test"),
                     "--destdir", str(dest), "--joined-dictionary"])
    return dest


def train_log(save_dir):
    rows = [json.loads(x) for x in open(os.path.join(save_dir, "metrics.jsonl"))]
    return [r for r in rows if r["type"] == "train_inner"]


def test_end_to_end(toy_corpus, tmp_path, capsys):
    data = binarize(toy_corpus, tmp_path / "bin")
    assert (data / "dict.src.txt").exists() and (data / "train.src-tgt.tgt.idx").exists()
    save = tmp_path / "ck"
    train.main([str(data), *TINY, "--max-epoch", "3", "--save-dir", str(save), "--log-interval", "1",
                "--eval-bleu", "--eval-bleu-remove-bpe", "none", "--best-checkpoint-metric", "bleu",
                "--maximize-best-checkpoint-metric"])
    valid = [json.loads(x) for x in open(save / "metrics.jsonl") if '"valid"' in x]
    assert len(valid) == 3 and all(0 <= r["bleu"] <= 100 for r in valid)
    for name in ("checkpoint1.pt", "checkpoint3.pt", "checkpoint_best.pt", "checkpoint_last.pt"):
        assert (save / name).exists()
    state = torch.load(save / "checkpoint_last.pt", weights_only=True)
    assert state["args"]["arch"] == "transformer_cpu" and state["extra_state"]["train_iterator"]["epoch"] == 3
    average_checkpoints.main(["--inputs", str(save), "--num-epoch-checkpoints", "2", "--output", str(tmp_path / "avg.pt")])
    capsys.readouterr()
    generate.main([str(data), "--path", str(tmp_path / "avg.pt"), "--beam", "2", "--nbest", "2",
                   "--results-path", str(tmp_path / "gen"), "--batch-size", "4"])
    out = capsys.readouterr().out
    assert "sacreBLEU signature: nrefs:1" in out
    lines = (tmp_path / "gen" / "generate-test.txt").read_text().splitlines()
    expected = {"S-": 6, "T-": 6, "H-": 12, "D-": 12, "P-": 12}  # 6 test sentences, nbest 2
    for prefix, n in expected.items():
        assert sum(x.startswith(prefix) for x in lines) == n, prefix
    hyps = (tmp_path / "gen" / "test.hyp.detok").read_text().splitlines()
    assert len(hyps) == 6
    generate.main([str(data), "--path", str(tmp_path / "avg.pt"), "--beam", "2", "--nbest", "2",
                   "--results-path", str(tmp_path / "gen2"), "--batch-size", "4", "--inter-threads", "2"])
    for name in ("generate-test.txt", "test.hyp.detok"):  # 2 batches in 2 processes: the same output
        assert (tmp_path / "gen2" / name).read_text() == (tmp_path / "gen" / name).read_text()
    score.main(["--sys", str(tmp_path / "gen" / "test.hyp.detok"), "--ref", str(toy_corpus / "test.tgt")])
    assert "sacreBLEU signature" in capsys.readouterr().out
    # interactive mode: stdin lines in, S-/H-/D-/P- lines out, same output as generate
    first_src = (toy_corpus / "test.src").read_text().splitlines()[0]
    monkey_stdin = io.StringIO(first_src + "\n")
    old, sys.stdin = sys.stdin, monkey_stdin
    try:
        interactive.main([str(data), "--path", str(tmp_path / "avg.pt"), "--beam", "2"])
    finally:
        sys.stdin = old
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"S-0\t{first_src}" and out[1].startswith("H-0\t") and out[3].startswith("P-0\t")
    gen_h = next(x for x in lines if x.startswith("H-0\t"))
    assert out[1].split("\t")[2] == gen_h.split("\t")[2]  # same hypothesis as nmt-sd-generate


CRITERIA = {
    "ls_ce": [],
    "rdrop": ["--criterion", "rdrop", "--rdrop-alpha", "5"],
    "intra": ["--criterion", "intra_distillation", "--intra-k", "3", "--intra-alpha", "5", "--intra-adaptive",
              "--intra-max-updates", "14"],  # pinned: the legs below differ in --max-update
    "seer": ["--criterion", "seer", "--seer-alpha", "0.5"],
}


@pytest.mark.parametrize("crit", sorted(CRITERIA))
def test_resume_reproduces_uninterrupted_run(toy_corpus, tmp_path, crit):
    data = binarize(toy_corpus, tmp_path / "bin")
    common = [str(data), *TINY, *CRITERIA[crit], "--log-interval", "1", "--no-epoch-checkpoints"]
    train.main([*common, "--max-update", "14", "--save-dir", str(tmp_path / "a")])
    train.main([*common, "--max-update", "5", "--save-dir", str(tmp_path / "b")])  # "interrupted"
    train.main([*common, "--max-update", "14", "--save-dir", str(tmp_path / "b")])  # resumes
    a, b = train_log(tmp_path / "a"), train_log(tmp_path / "b")
    assert [r["num_updates"] for r in b] == list(range(1, 15))
    n_batches = torch.load(tmp_path / "a" / "checkpoint_last.pt", weights_only=True)["extra_state"]
    assert n_batches["train_iterator"]["epoch"] >= 2  # the run crossed an epoch boundary
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6), ra["num_updates"]
        assert ra["gnorm"] == pytest.approx(rb["gnorm"], abs=1e-5)
    term_key = {"rdrop": "rdrop_kl", "intra": "intra_x", "seer": "seer_kd"}.get(crit)
    if term_key:  # every term's metric is logged
        assert all(term_key in r for r in a) and a[-1][term_key] > 0


@pytest.mark.parametrize("extra", [[], ["--terms", "rdrop", "--rdrop-alpha", "5"]], ids=["alone", "with_rdrop"])
def test_seer_checkpoint_is_a_plain_transformer_that_translates(toy_corpus, tmp_path, capsys, extra):
    data = binarize(toy_corpus, tmp_path / "bin")
    save = tmp_path / "ck"
    train.main([str(data), *TINY, *CRITERIA["seer"], *extra, "--max-update", "4", "--save-dir", str(save),
                "--log-interval", "1", "--no-epoch-checkpoints"])
    rows = train_log(save)
    assert len(rows) == 4 and all(r["seer_kd"] > 0 and r["seer_nll"] > 0 for r in rows)
    assert all(("rdrop_kl" in r) == bool(extra) for r in rows)
    state = torch.load(save / "checkpoint_last.pt", weights_only=True)
    assert not [k for k in state["model"] if "seer" in k]  # the seer lives in "criterion" only
    assert any(k.startswith("terms.0.seer.") for k in state["criterion"])
    capsys.readouterr()
    generate.main([str(data), "--path", str(save / "checkpoint_last.pt"), "--beam", "2", "--batch-size", "4",
                   "--results-path", str(tmp_path / "gen")])
    assert "sacreBLEU signature" in capsys.readouterr().out
    lines = (tmp_path / "gen" / "generate-test.txt").read_text().splitlines()
    assert sum(x.startswith("H-") for x in lines) == 6


@pytest.mark.parametrize("crit,port", [("ls_ce", 29531), ("intra", 29532)])
def test_two_process_ddp_on_cpu(toy_corpus, tmp_path, crit, port):
    data = binarize(toy_corpus, tmp_path / "bin")
    save = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "nmt_sd.cli.train", str(data), *TINY, *CRITERIA[crit], "--max-update", "6",
           "--save-dir", str(save), "--log-interval", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (proc.stdout + proc.stderr).count("world size: 2") == 1  # rank 1 logs warnings only
    rows = train_log(save)
    assert [r["num_updates"] for r in rows] == list(range(1, 7))  # only rank 0 logs
    assert (save / "checkpoint_last.pt").exists()
    # each update holds two shards' batches: more tokens than any single batch of <= 64
    assert all(r["wpb"] > 0 for r in rows)
    state = torch.load(save / "checkpoint_last.pt", weights_only=True)
    assert state["num_updates"] == 6


def run_cli_subprocess(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in err[0], err[0]


def test_bad_inputs_end_in_one_line(toy_corpus, tmp_path):
    (toy_corpus / "bad.src").write_text("a b\nc d\n")
    (toy_corpus / "bad.tgt").write_text("a b\n")
    p = run_cli_subprocess("nmt_sd.cli.preprocess", "-s", "src", "-t", "tgt", "--trainpref", str(toy_corpus / "bad"), "--destdir", str(tmp_path / "x"))
    assert_one_line_error(p, "misaligned", "bad.src has 2 lines", "bad.tgt has 1 lines")
    p = run_cli_subprocess("nmt_sd.cli.preprocess", "-s", "src", "-t", "tgt", "--trainpref", str(toy_corpus / "nope"), "--destdir", str(tmp_path / "x"))
    assert_one_line_error(p, "not found", "nope.src")
    (toy_corpus / "empty.src").write_text("")
    (toy_corpus / "empty.tgt").write_text("")
    p = run_cli_subprocess("nmt_sd.cli.preprocess", "-s", "src", "-t", "tgt", "--trainpref", str(toy_corpus / "empty"), "--destdir", str(tmp_path / "x"))
    assert_one_line_error(p, "empty training corpus")
    (toy_corpus / "utf.src").write_bytes(b"ok\n\xff\xfe bad\n")
    (toy_corpus / "utf.tgt").write_text("ok\nok\n")
    p = run_cli_subprocess("nmt_sd.cli.preprocess", "-s", "src", "-t", "tgt", "--trainpref", str(toy_corpus / "utf"), "--destdir", str(tmp_path / "x"))
    assert_one_line_error(p, "utf.src:2", "invalid UTF-8")

    data = binarize(toy_corpus, tmp_path / "bin")
    p = run_cli_subprocess("nmt_sd.cli.train", str(data), "--arch", "transformer_tiny_nope", "--max-tokens", "64", "--max-update", "1")
    assert_one_line_error(p, "unknown --arch", "transformer_tiny_nope")
    p = run_cli_subprocess("nmt_sd.cli.train", str(data), "--criterion", "nope_ce", "--max-tokens", "64", "--max-update", "1")
    assert_one_line_error(p, "unknown criterion", "nope_ce")
    p = run_cli_subprocess("nmt_sd.cli.train", str(data), "--max-tokens", "64", "--max-update", "1", "--no-such-flag")
    assert_one_line_error(p, "--no-such-flag")

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    p = run_cli_subprocess("nmt_sd.cli.generate", str(data), "--path", str(corrupt))
    assert_one_line_error(p, "cannot read checkpoint", "corrupt.pt")
    save = tmp_path / "ck"
    train.main([str(data), *TINY, "--max-update", "1", "--save-dir", str(save)])
    other = tmp_path / "bin2"
    (toy_corpus / "other.src").write_text("x y z\n" * 5)
    (toy_corpus / "other.tgt").write_text("u v w q\n" * 5)
    preprocess.main(["-s", "src", "-t", "tgt", "--trainpref", str(toy_corpus / "other"), "--testpref", str(toy_corpus / "other"),
                     "--destdir", str(other), "--joined-dictionary", "--padding-factor", "1"])
    p = run_cli_subprocess("nmt_sd.cli.generate", str(other), "--path", str(save / "checkpoint_last.pt"))
    assert_one_line_error(p, "does not match the model", "checkpoint_last.pt")
    p = run_cli_subprocess("nmt_sd.cli.generate", str(data), "--path", str(save / "checkpoint_last.pt"), "--inter-threads", "0")
    assert_one_line_error(p, "--inter-threads must be >= 1")
    p = run_cli_subprocess("nmt_sd.cli.train", str(tmp_path / "missing_dir"), "--max-tokens", "64", "--max-update", "1")
    assert_one_line_error(p, "data directory not found", "missing_dir")
