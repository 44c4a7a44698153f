"""Multilingual translation: language pairs and tags, one-pair batches with temperature
sampling (deterministic, resumable, sharded), per-pair validation, one-pair generation,
LSSD end to end with a restart, the plot, and data preparation (Multi30k, TED)."""

import argparse
import json
import os
import random
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from data_prep import prepare_multilingual
from nmt_sd.cli import generate, plot_valid, seqkd, train
from nmt_sd.data.multilingual import draws_per_pair, langtok, sampling_probs
from nmt_sd.errors import NmtSdError
from nmt_sd.multilingual import parse_lang_pairs
from nmt_sd.options import parse_training_args
from nmt_sd.tasks import TASKS
from tests.conftest import SHARED_DATA
from tests.test_cli import TINY, assert_one_line_error, run_cli_subprocess, train_log

SIZES = {"de": 60, "fr": 24, "cs": 8}  # training pairs: three speeds of convergence


@pytest.fixture(scope="module")
def toy_multi(tmp_path_factory):
    """Three synthetic 'languages' -> en (target = the source reversed, mapped word by
    word), binarized with one joint dictionary by data_prep.prepare_multilingual."""
    root = tmp_path_factory.mktemp("multi")
    g = random.Random(0)
    for lang, n_train in SIZES.items():
        lines = {"train": n_train, "valid": 6, "test": 6}
        for split, n in lines.items():
            src, tgt = [], []
            for _ in range(n):
                words = [g.randrange(10) for _ in range(g.randint(2, 6))]
                src.append(" ".join(f"{lang}{w}" for w in words))
                tgt.append(" ".join(f"e{w}" for w in reversed(words)))
            (root / f"{split}.{lang}-en.{lang}").write_text("\n".join(src) + "\n")
            (root / f"{split}.{lang}-en.en").write_text("\n".join(tgt) + "\n")
    prepare_multilingual.binarize(root, [(x, "en") for x in SIZES], root / "bin")
    return root / "bin"


def task_for(data, pairs="de-en,fr-en,cs-en", **over):
    a = dict(
        data=str(data),
        lang_pairs=pairs,
        encoder_langtok="src",
        decoder_langtok=True,
        sampling_method="temperature",
        sampling_temperature=1.0,
        source_lang=None,
        target_lang=None,
    )
    a.update(over)
    return TASKS.get("multilingual_translation").setup_task(argparse.Namespace(**a))


def test_lang_pairs_parsing_and_errors():
    assert parse_lang_pairs(" de-en, fr-en ") == [("de", "en"), ("fr", "en")]
    for spec, msg in {
        "de": "bad pair 'de'",
        "de-de": "bad pair",
        "de-en,de-en": "listed twice",
        "": "needs --lang-pairs",
        "a-b-c": "bad pair",
    }.items():
        with pytest.raises(NmtSdError, match=msg):
            parse_lang_pairs(spec)


def test_temperature_sampling():
    assert draws_per_pair([30, 10, 2], 1.0) == [30, 10, 2]  # T = 1: every batch once
    flat = draws_per_pair([30, 10, 2], 5.0)
    assert sum(flat) == 42 and flat[0] < 30 and flat[2] > 2  # flatter
    assert draws_per_pair([30, 10, 2], float("inf")) == [14, 14, 14]
    # p_i ∝ (n_i / N)^(1/T): T = 2 -> sqrt(3/4) : sqrt(1/4)
    np.testing.assert_allclose(
        sampling_probs([3, 1], 2.0), [3**0.5 / (3**0.5 + 1), 1 / (3**0.5 + 1)]
    )


def test_language_tags_and_one_pair_batches(toy_multi):
    task = task_for(toy_multi)
    d = task.tgt_dict
    assert task.langs == ["cs", "de", "en", "fr"] and all(
        langtok(x) in d.indices for x in task.langs
    )
    ds = task.load_dataset("train")
    itr = task.get_batch_iterator(ds, 64, None, (64, 64), seed=3)
    seen = {}
    for b in itr.next_epoch_itr():
        pair = task.pair_of(b)
        assert (
            b["src_lang_id"].unique().numel() == 1
            and b["tgt_lang_id"].unique().numel() == 1
        )
        src = pair.split("-")[0]
        assert (
            b["net_input"]["src_tokens"][:, 0] == d.index(langtok(src))
        ).all()  # --encoder-langtok src
        assert (
            b["net_input"]["prev_output_tokens"][:, 0] == d.index("__en__")
        ).all()  # --decoder-langtok
        assert (b["target"] != d.index("__en__")).all()  # the tag is never a target
        seen[pair] = seen.get(pair, 0) + b["nsentences"]
    # T = 1: one pass over the data
    assert seen == {
        "de-en": 60,
        "fr-en": 24,
        "cs-en": 8,
    }
    tgt_tag = task_for(toy_multi, encoder_langtok="tgt", decoder_langtok=False)
    b = next(
        tgt_tag.get_batch_iterator(
            tgt_tag.load_dataset("valid"), 64, None, shuffle=False
        ).next_epoch_itr()
    )
    assert (b["net_input"]["src_tokens"][:, 0] == d.index("__en__")).all()
    assert (b["net_input"]["prev_output_tokens"][:, 0] == d.eos()).all()


def test_epoch_order_is_deterministic_resumable_and_sharded(toy_multi):
    task = task_for(toy_multi, sampling_temperature=3.0)
    ds = task.load_dataset("train")

    def ids(itr, n=None):
        return [
            b["id"].tolist() for _, b in zip(range(n or 10**6), itr.next_epoch_itr())
        ]

    first = task.get_batch_iterator(ds, 32, None, seed=7)
    full = ids(first)
    first.end_epoch()
    # same (seed, epoch)
    assert ids(task.get_batch_iterator(ds, 32, None, seed=7)) == full
    assert ids(first) != full  # epoch 2 draws another order
    resumed = task.get_batch_iterator(ds, 32, None, seed=7)
    resumed.load_state_dict({"epoch": 1, "iterations_in_epoch": 3})
    assert ids(resumed) == full[3:]
    shards = [
        ids(task.get_batch_iterator(ds, 32, None, seed=7, num_shards=2, shard_id=i))
        for i in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) and sorted(shards[0] + shards[1]) == sorted(
        full + full[: len(full) % 2]
    )


def test_bad_inputs_name_the_flag_or_file(toy_multi, tmp_path):
    with pytest.raises(
        NmtSdError, match=r"--lang-pairs de-fr: .*train.de-fr.de.idx not found"
    ):
        task_for(toy_multi, pairs="de-en,de-fr").load_dataset("train")
    with pytest.raises(
        NmtSdError, match=r"no dictionary for language 'it': .*dict.it.txt not found"
    ):
        task_for(toy_multi, pairs="de-en,it-en")
    with pytest.raises(
        NmtSdError, match="unknown pair, the model was trained on --lang-pairs de-en"
    ):
        task_for(toy_multi, pairs="de-en,fr-en", source_lang="cs", target_lang="en")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in toy_multi.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "dict.fr.txt").write_text("x 1\n")
    with pytest.raises(NmtSdError, match="dict.fr.txt differs from .*dict.cs.txt"):
        task_for(bad)
    with pytest.raises(NmtSdError, match="-s/-t select one pair for generation"):
        parse_training_args(
            [
                str(toy_multi),
                "--task",
                "multilingual_translation",
                "--lang-pairs",
                "de-en",
                "-s",
                "de",
                "--max-tokens",
                "64",
                "--max-update",
                "1",
            ]
        )
    p = run_cli_subprocess(
        "nmt_sd.cli.train",
        str(toy_multi),
        "--task",
        "multilingual_translation",
        "--lang-pairs",
        "de-en,xx-en",
        "--max-tokens",
        "64",
        "--max-update",
        "1",
    )
    assert_one_line_error(p, "--lang-pairs", "dict.xx.txt")


MULTI = [
    "--task",
    "multilingual_translation",
    "--lang-pairs",
    "de-en,fr-en,cs-en",
    "--encoder-langtok",
    "src",
    "--decoder-langtok",
    "--sampling-temperature",
    "2",
]


def test_m2o_per_pair_validation_generation_and_plot(toy_multi, tmp_path, capsys):
    save = tmp_path / "ck"
    train.main(
        [
            str(toy_multi),
            *TINY,
            *MULTI,
            "--max-epoch",
            "2",
            "--save-dir",
            str(save),
            "--eval-bleu",
            "--eval-bleu-remove-bpe",
            "none",
            "--log-interval",
            "5",
        ]
    )
    valid = [json.loads(x) for x in open(save / "metrics.jsonl") if '"valid"' in x]
    assert len(valid) == 2
    for pair in ("de-en", "fr-en", "cs-en"):
        assert valid[-1][f"{pair}_loss"] > 0 and 0 <= valid[-1][f"{pair}_bleu"] <= 100
    mean = sum(valid[-1][f"{p}_bleu"] for p in ("de-en", "fr-en", "cs-en")) / 3
    assert valid[-1]["bleu"] == pytest.approx(mean)
    capsys.readouterr()
    generate.main(
        [
            str(toy_multi),
            "--path",
            str(save / "checkpoint_last.pt"),
            "-s",
            "fr",
            "-t",
            "en",
            "--beam",
            "2",
            "--results-path",
            str(tmp_path / "gen"),
        ]
    )
    lines = (tmp_path / "gen" / "generate-test.txt").read_text().splitlines()
    assert (
        sum(x.startswith("H-") for x in lines) == 6
        and "sacreBLEU" in capsys.readouterr().out
    )
    assert all("__" not in x.split("\t")[-1] for x in lines if x.startswith("H-"))
    plot_valid.main([str(save)])
    assert (save / "valid_loss.png").stat().st_size > 1000


def test_seqkd_distils_every_pair_of_a_multilingual_teacher(toy_multi, tmp_path):
    """nmt-sd-seqkd with a many-to-one teacher writes each pair's teacher output (its
    language tags applied), the text nmt-sd-generate gives for that pair, and a multilingual
    run trains on it; a one-to-many teacher's -s/-t pair reads and copies SPLIT.tgt-src.
    """
    m2o, out, gen = tmp_path / "m2o", tmp_path / "distilled", tmp_path / "gen"
    short = "--max-len-b 8 --beam 2".split()
    train.main(
        [str(toy_multi), *TINY, *MULTI, *f"--max-update 6 --save-dir {m2o}".split()]
    )
    ckpt = str(m2o / "checkpoint_last.pt")
    seqkd.main([str(toy_multi), "--path", ckpt, "--destdir", str(out), *short])
    for lang, n in SIZES.items():
        raw = (out / f"train.{lang}-en.en").read_text().splitlines()
        assert len(raw) == n and not (out / f"train.{lang}-en.partial").exists()
        valid = f"valid.{lang}-en.{lang}.bin"
        assert (out / valid).read_bytes() == (toy_multi / valid).read_bytes()
    argv = f"-s fr -t en --gen-subset train --results-path {gen} --quiet".split()
    generate.main([str(toy_multi), "--path", ckpt, *short, *argv])
    fr = (out / "train.fr-en.en").read_text().splitlines()
    assert fr == (gen / "train.hyp.detok").read_text().splitlines()
    assert (out / "dict.txt").read_bytes() == (toy_multi / "dict.txt").read_bytes()
    student = tmp_path / "student"
    train.main(
        [str(out), *TINY, *MULTI, *f"--max-update 2 --save-dir {student}".split()]
    )
    state = torch.load(student / "checkpoint_last.pt", weights_only=True)
    assert state["num_updates"] == 2
    o2m, o2m_kd = tmp_path / "o2m", tmp_path / "o2m_kd"
    flags = "--task multilingual_translation --lang-pairs en-de,en-fr --decoder-langtok"
    flags += f" --encoder-langtok tgt --max-update 4 --save-dir {o2m}"
    train.main([str(toy_multi), *TINY, *flags.split()])
    argv = f"--path {o2m}/checkpoint_last.pt --destdir {o2m_kd} -s en -t fr".split()
    seqkd.main([str(toy_multi), *argv, *short])
    names = sorted(os.listdir(o2m_kd))
    assert "train.en-fr.fr.idx" in names and "valid.fr-en.fr.idx" in names
    assert not any("de-en" in x for x in names)
    assert len((o2m_kd / "train.en-fr.fr").read_text().splitlines()) == SIZES["fr"]


def test_lssd_restart_reproduces_the_uninterrupted_run(toy_multi, tmp_path):
    """Teachers (files beside the checkpoint), best epochs and distillation decisions
    survive a restart after epoch 2: the resumed run logs exactly the same numbers."""
    common = [
        str(toy_multi),
        *TINY,
        *MULTI,
        "--criterion",
        "lssd",
        "--lssd-weight",
        "2",
        "--lssd-warmup-epochs",
        "0",
        "--lr",
        "2e-2",
        "--log-interval",
        "1",
        "--no-epoch-checkpoints",
    ]
    train.main([*common, "--max-epoch", "5", "--save-dir", str(tmp_path / "a")])
    # "interrupted"
    train.main([*common, "--max-epoch", "2", "--save-dir", str(tmp_path / "b")])
    # resumes (epoch checkpoints off)
    train.main([*common, "--max-epoch", "5", "--save-dir", str(tmp_path / "b")])
    a, b = train_log(tmp_path / "a"), train_log(tmp_path / "b")
    assert [r["num_updates"] for r in a] == [r["num_updates"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6) and ra[
            "lssd_kd"
        ] == pytest.approx(rb["lssd_kd"])
        assert ra["lssd_distilled"] == rb["lssd_distilled"]
    # some language was distilled after its best epoch
    assert any(r["lssd_distilled"] > 0 for r in a)
    va, vb = (
        [json.loads(x) for x in open(d / "metrics.jsonl") if '"valid"' in x]
        for d in (tmp_path / "a", tmp_path / "b")
    )
    keys = [
        k for k in va[-1] if k.startswith("lssd_best_epoch_") or k == "lssd_updated"
    ]
    assert [[r[k] for k in keys] for r in va] == [[r[k] for k in keys] for r in vb]
    state = torch.load(tmp_path / "b" / "checkpoint_last.pt", weights_only=True)
    best = state["criterion"]["terms.0._extra_state"]["best_epoch"]
    # teachers live beside the checkpoint
    assert not [k for k in state["model"] if "teacher" in k]
    for e in set(best.values()):
        assert (tmp_path / "b" / f"lssd_teacher{e}.pt").exists()


def test_lssd_resumes_mid_epoch_from_an_update_checkpoint(toy_multi, tmp_path):
    """A run stopped inside an epoch (as by a kill after a --save-interval-updates
    checkpoint) resumes from checkpoint_last.pt at that update: the epoch's remaining
    batches, the teachers and the epoch's distillation decisions; it logs the same numbers
    as the uninterrupted run."""
    common = [
        str(toy_multi),
        *TINY,
        *MULTI,
        "--criterion",
        "lssd",
        "--lssd-weight",
        "2",
        "--lssd-warmup-epochs",
        "0",
        "--lr",
        "2e-2",
        "--log-interval",
        "1",
        "--no-epoch-checkpoints",
        "--save-interval-updates",
        "1",
        "--max-epoch",
        "5",
    ]
    train.main([*common, "--save-dir", str(tmp_path / "a")])
    a = train_log(tmp_path / "a")
    # update checkpoints inside epochs
    assert list((tmp_path / "a").glob("checkpoint_4_*.pt"))
    epoch_ends = [
        json.loads(x)["num_updates"]
        for x in open(tmp_path / "a" / "metrics.jsonl")
        if '"valid"' in x
    ]
    stop = epoch_ends[2] + 1  # the first update of epoch 4, after teachers exist
    assert stop < epoch_ends[3]  # mid-epoch
    # "killed"
    train.main([*common, "--max-update", str(stop), "--save-dir", str(tmp_path / "b")])
    train.main([*common, "--save-dir", str(tmp_path / "b")])  # resumes inside epoch 4
    b = train_log(tmp_path / "b")
    assert [r["num_updates"] for r in a] == [r["num_updates"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6), ra["num_updates"]
        assert ra["lssd_distilled"] == rb["lssd_distilled"]
    assert any(r["lssd_distilled"] > 0 for r in a if r["num_updates"] > stop)


def test_prepare_ted_directories_and_tsv(tmp_path):
    aze = SHARED_DATA / "ted-qi2018"
    if not (aze / "aze_eng").is_dir():
        pytest.skip(f"shared data not found: {aze}")
    prepare_multilingual.main(
        [
            "--format",
            "ted",
            "--input",
            str(aze),
            "--langs",
            "aze",
            "--pivot",
            "eng",
            "--train-sizes",
            "aze:300",
            "--vocab-size",
            "400",
            "--output",
            str(tmp_path / "ted"),
        ]
    )
    out = tmp_path / "ted"
    assert len((out / "raw" / "train.aze-eng.aze").read_text().splitlines()) == 300
    assert len((out / "raw" / "valid.aze-eng.eng").read_text().splitlines()) == 671
    # both directions from one file set
    task = task_for(out / "bin", pairs="aze-eng,eng-aze")
    assert len(task.load_dataset("test").datasets[1]) == 903
    tsv = tmp_path / "tsv"
    tsv.mkdir()
    for split in ("train", "dev", "test"):
        (tsv / f"all_talks_{split}.tsv").write_text(
            "talk_name\ten\taz\tbe\nt1\tHello .\tSalam .\t__NULL__\nt1\tYes .\t_ _ NULL _ _\tТак .\nt2\tNo .\tYox .\tНе .\n"
        )
    assert prepare_multilingual.read_ted(tsv, "aze", "eng")["valid"] == (
        ["Salam .", "Yox ."],
        ["Hello .", "No ."],
    )


def test_prepare_reads_iwslt_multilingual_releases(tmp_path):
    pair = tmp_path / "de-en"
    pair.mkdir()
    for lang, words in (("de", ["Hallo", "Ja"]), ("en", ["Hello", "Yes"])):
        (pair / f"train.tags.de-en.{lang}").write_text(
            f"<url>u</url>\n<speaker>S</speaker>\n{words[0]}\n{words[1]}\n"
        )
        for name in ("dev2010", "tst2010"):
            (pair / f"IWSLT17.TED.{name}.de-en.{lang}.xml").write_text(
                f'<doc>\n<seg id="1"> {words[0]} </seg>\n</doc>\n'
            )
    data = prepare_multilingual.read_iwslt(tmp_path, "de", "en", tmp_path / "orig")
    assert data["train"] == (["Hallo", "Ja"], ["Hello", "Yes"]) and data["test"] == (
        ["Hallo"],
        ["Hello"],
    )


def test_prepare_multi30k_subsamples_each_language(tmp_path):
    m30k = SHARED_DATA / "multi30k-task1"
    if not m30k.is_dir():
        pytest.skip(f"shared data not found: {m30k}")
    args = [
        "--format",
        "multi30k",
        "--input",
        str(m30k),
        "--langs",
        "de,cs",
        "--pivot",
        "en",
        "--train-sizes",
        "de:200,cs:50",
        "--vocab-size",
        "300",
        "--output",
        str(tmp_path / "m"),
    ]
    prepare_multilingual.main(args)
    raw = tmp_path / "m" / "raw"
    assert [
        len((raw / f"train.{x}-en.en").read_text().splitlines()) for x in ("de", "cs")
    ] == [200, 50]
    assert len((raw / "test.cs-en.cs").read_text().splitlines()) == 1000
    dicts = {
        (tmp_path / "m" / "bin" / f"dict.{x}.txt").read_text()
        for x in ("de", "cs", "en")
    }
    assert len(dicts) == 1 and "__cs__ 0" in dicts.pop()
    with pytest.raises(NmtSdError, match="--train-sizes: bad entry 'fr:10'"):
        prepare_multilingual.main(
            [
                "--format",
                "multi30k",
                "--input",
                str(m30k),
                "--langs",
                "de",
                "--train-sizes",
                "fr:10",
                "--output",
                str(tmp_path / "n"),
            ]
        )


def test_lssd_under_two_process_ddp_with_bf16(toy_multi, tmp_path):
    """Both workers see the same all-reduced per-pair losses, so they pick the same teachers
    and distil the same languages (the run would hang or crash on diverging log keys).
    """
    save = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29541",
        "-m",
        "nmt_sd.cli.train",
        str(toy_multi),
        *TINY,
        *MULTI,
        "--criterion",
        "lssd",
        "--lssd-warmup-epochs",
        "0",
        "--lssd-gate",
        "selective",
        "--lr",
        "2e-2",
        "--bf16",
        "--max-epoch",
        "4",
        "--save-dir",
        str(save),
        "--log-interval",
        "1",
    ]
    # rank 1 logs too, to compare
    env = dict(os.environ, OMP_NUM_THREADS="1", NMT_SD_LOG_ALL_RANKS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "world size: 2" in out
    decisions = Counter(
        line.split("lssd epoch")[1] for line in out.splitlines() if "lssd epoch" in line
    )
    # both ranks log every decision
    assert decisions and all(n == 2 for n in decisions.values())
    assert any(r["lssd_distilled"] > 0 for r in train_log(save))
