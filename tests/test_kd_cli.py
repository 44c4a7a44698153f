"""Teacher-student KD end to end: a tiny teacher trained here, nmt-sd-seqkd (sequence-level
KD, seq-inter), a student trained with --criterion kd, and --init-from-teacher."""

import argparse
import os
import random

import pytest
import torch

from nmt_sd.cli import seqkd, train
from nmt_sd.cli.common import run_cli
from nmt_sd.criterions.kd_teacher import load_teacher
from nmt_sd.generation import seqkd as seqkd_lib
from nmt_sd.generation.search import beam_search, special_ids
from nmt_sd.models import TransformerModel
from nmt_sd.tasks import TASKS
from nmt_sd.training import init_from_teacher as init_mod
from tests.conftest import tiny_args, tiny_dict
from tests.test_cli import TINY, binarize, train_log

SP = "\u2581"
TEACHER = [
    "--encoder-layers",
    "2",
    "--decoder-layers",
    "2",
    "--encoder-embed-dim",
    "48",
    "--decoder-embed-dim",
    "48",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A SentencePiece-style toy corpus (pieces start with U+2581), binarized, and a
    2-layer, width-48 teacher trained for 8 updates."""
    root = tmp_path_factory.mktemp("kd")
    g = random.Random(0)
    raw = {"src": [], "tgt": []}
    for _ in range(60):
        words = [f"s{g.randint(0, 11)}" for _ in range(g.randint(2, 7))]
        raw["src"].append(" ".join(words))
        raw["tgt"].append(" ".join("t" + w[1:] for w in reversed(words)))
    for split, sl in (
        ("train", slice(0, 48)),
        ("valid", slice(48, 54)),
        ("test", slice(54, 60)),
    ):
        for side in ("src", "tgt"):
            pieces = [" ".join(SP + w for w in line.split()) for line in raw[side][sl]]
            (root / f"{split}.{side}").write_text("\n".join(pieces) + "\n")
    data = binarize(root, root / "bin")
    train.main(
        [
            str(data),
            *TINY,
            *TEACHER,
            "--max-update",
            "8",
            "--save-dir",
            str(root / "teacher"),
            "--no-epoch-checkpoints",
        ]
    )
    return root, data, str(root / "teacher" / "checkpoint_last.pt"), raw


def test_seqkd_writes_one_detokenized_line_per_source_in_order(setup):
    """(decoded in two processes: the lines are still in order, each the teacher's own output)"""
    root, data, teacher_path, raw = setup
    out = root / "distilled"
    seqkd.main(
        [
            str(data),
            "--path",
            teacher_path,
            "--destdir",
            str(out),
            "--beam",
            "2",
            "--max-len-b",
            "12",
            "--remove-bpe",
            "sentencepiece",
            "--batch-size",
            "5",
            "--num-threads",
            "1",
            "--inter-threads",
            "2",
        ]
    )
    src_lines = (out / "train.src").read_text(encoding="utf-8").splitlines()
    tgt_lines = (out / "train.tgt").read_text(encoding="utf-8").splitlines()
    # in order, detokenized
    assert src_lines == raw["src"][:48] and len(tgt_lines) == 48
    assert not any(SP in line for line in tgt_lines)
    for name in (
        "dict.src.txt",
        "dict.tgt.txt",
        "valid.src-tgt.src.bin",
        "test.src-tgt.tgt.idx",
    ):
        assert (out / name).read_bytes() == (data / name).read_bytes()
    task = TASKS.get("translation").setup_task(
        argparse.Namespace(data=str(out), source_lang=None, target_lang=None)
    )
    ds = task.load_dataset("train")
    orig = (
        TASKS.get("translation")
        .setup_task(
            argparse.Namespace(data=str(data), source_lang=None, target_lang=None)
        )
        .load_dataset("train")
    )
    teacher, _ = load_teacher(teacher_path, task.src_dict, task.tgt_dict)
    for i in (
        0,
        17,
        47,
    ):  # each line is the teacher's beam output for that source, decoded alone
        assert (ds.src[i] == orig.src[i]).all()
        src = torch.from_numpy(orig.src[i])[None]
        hyp = beam_search(
            teacher,
            src,
            torch.tensor([src.size(1)]),
            beam=2,
            max_len_b=12,
            **special_ids(task.tgt_dict),
        )[0][0]["tokens"]
        assert ds.tgt[i].tolist() == hyp.tolist()
        assert tgt_lines[i] == task.tgt_dict.string(hyp, "sentencepiece")


def test_seq_inter_keeps_the_candidate_closest_to_the_reference(setup):
    assert (
        seqkd_lib.closest_to_reference(
            ["a b c", "the cat sat on the mat", "the cat"], "the cat sat on the mat"
        )
        == 1
    )
    # ties: the better-scored candidate
    assert seqkd_lib.closest_to_reference(["x", "y"], "z") == 0
    root, data, teacher_path, _ = setup
    out = root / "inter"
    seqkd.main(
        [
            str(data),
            "--path",
            teacher_path,
            "--destdir",
            str(out),
            "--beam",
            "3",
            "--seq-inter",
            "--max-len-b",
            "12",
            "--remove-bpe",
            "sentencepiece",
            "--num-threads",
            "1",
        ]
    )
    assert len((out / "train.tgt").read_text(encoding="utf-8").splitlines()) == 48


def test_seqkd_errors_are_one_line(setup, capsys):
    root, data, teacher_path, _ = setup
    for argv, msg in (
        (
            [str(data), "--path", teacher_path, "--destdir", str(data)],
            "--destdir must differ",
        ),
        (
            [str(data), "--path", str(root / "nope.pt"), "--destdir", str(root / "x")],
            "not found",
        ),
    ):
        with pytest.raises(SystemExit):
            run_cli("nmt-sd-seqkd", seqkd.main, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err


def test_student_trains_with_kd_on_distilled_data(setup, capsys):
    root, data, teacher_path, _ = setup
    out = root / "distilled_for_kd"
    seqkd.main(
        [
            str(data),
            "--path",
            teacher_path,
            "--destdir",
            str(out),
            "--beam",
            "1",
            "--max-len-b",
            "12",
            "--num-threads",
            "1",
        ]
    )
    save = root / "student"
    train.main(
        [
            str(out),
            *TINY,
            "--criterion",
            "kd",
            "--teacher-path",
            teacher_path,
            "--kd-alpha",
            "0.5",
            "--kd-temperature",
            "2",
            "--kd-hidden-weight",
            "1",
            "--kd-attn-weight",
            "1",
            "--max-update",
            "3",
            "--log-interval",
            "1",
            "--save-dir",
            str(save),
            "--no-epoch-checkpoints",
        ]
    )
    rows = train_log(save)
    assert len(rows) == 3 and all(
        {"kd_loss", "kd_hidden", "kd_attn"} <= set(r) for r in rows
    )
    state = torch.load(save / "checkpoint_last.pt", weights_only=True)
    # the width-32 student learns width-48 projections; the teacher itself is never saved
    assert {k: tuple(v.shape) for k, v in state["criterion"].items()} == {
        "terms.0.proj.enc.weight": (48, 32),
        "terms.0.proj.enc.bias": (48,),
        "terms.0.proj.dec.weight": (48, 32),
        "terms.0.proj.dec.bias": (48,),
    }
    assert len(state["model"]) == len(
        TransformerModel.build_model(
            argparse.Namespace(**state["args"]), tiny_dict(), tiny_dict()
        ).state_dict()
    )
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_cli(
            "nmt-sd-train",
            train.main,
            [
                str(out),
                *TINY,
                "--criterion",
                "kd",
                "--teacher-path",
                teacher_path,
                "--kd-layer-map",
                "enc:1-3",
                "--max-update",
                "1",
                "--save-dir",
                str(root / "bad"),
            ],
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "nmt-sd-train: error: --kd-layer-map: enc teacher layer 3 out of range 1..2 in 'enc:1-3'"
    ]


class Task:
    src_dict = tgt_dict = tiny_dict()


def test_init_from_teacher_copies_mapped_layers_exactly(tmp_path):
    targs = tiny_args(encoder_layers=4, decoder_layers=3, share_all_embeddings=True)
    torch.manual_seed(3)
    teacher = TransformerModel.build_model(targs, Task.src_dict, Task.tgt_dict)
    path = tmp_path / "t.pt"
    torch.save(
        {"model": teacher.state_dict(), "args": {**vars(targs), "arch": "transformer"}},
        path,
    )
    for spec, want in (
        (
            "",
            {"encoder": [(0, 1), (1, 3)], "decoder": [(0, 1), (1, 2)]},
        ),  # every k-th, top to top
        ("dec:1-1", {"decoder": [(0, 0)]}),
    ):
        torch.manual_seed(4)
        args = tiny_args(init_from_teacher=str(path), init_layer_map=spec)
        student = TransformerModel.build_model(args, Task.src_dict, Task.tgt_dict)
        fresh = {k: v.clone() for k, v in student.state_dict().items()}
        init_mod.init_from_teacher(args, student, Task)
        for name in ("encoder", "decoder"):
            pairs = dict(want.get(name, []))
            for s in range(2):
                expect = getattr(teacher, name).layers[pairs[s]] if s in pairs else None
                for k, v in getattr(student, name).layers[s].state_dict().items():
                    ref = (
                        expect.state_dict()[k]
                        if expect is not None
                        else fresh[f"{name}.layers.{s}.{k}"]
                    )
                    assert torch.equal(v, ref), (spec, name, s, k)
        for k in ("encoder.embed_tokens.weight", "decoder.output_projection.weight"):
            assert torch.equal(student.state_dict()[k], teacher.state_dict()[k])
    wide = tiny_args(
        init_from_teacher=str(path), init_layer_map="", encoder_ffn_embed_dim=64
    )
    with pytest.raises(
        Exception, match="encoder layer 1 cannot take teacher layer 2: 'fc1.weight'"
    ):
        init_mod.init_from_teacher(
            wide, TransformerModel.build_model(wide, Task.src_dict, Task.tgt_dict), Task
        )


def test_init_from_teacher_runs_only_on_fresh_runs(setup, monkeypatch):
    root, data, teacher_path, _ = setup
    calls = []
    real = train.init_from_teacher
    monkeypatch.setattr(
        train,
        "init_from_teacher",
        lambda *a: calls.append(a[0].init_from_teacher) or real(*a),
    )
    save = root / "init_student"
    student = [
        *TINY,
        "--encoder-embed-dim",
        "48",
        "--decoder-embed-dim",
        "48",
        "--init-from-teacher",
        teacher_path,
        "--save-dir",
        str(save),
        "--no-epoch-checkpoints",
    ]
    train.main([str(data), *student, "--max-update", "1"])
    # resumes checkpoint_last.pt: no re-initialisation
    train.main([str(data), *student, "--max-update", "2"])
    assert calls == [teacher_path]
    assert os.path.exists(save / "checkpoint_last.pt")


def test_interrupted_seqkd_resumes_and_writes_the_same_set(setup, monkeypatch, capsys):
    root, data, teacher_path, _ = setup
    base = root / "distilled_whole"
    argv = [
        str(data),
        "--path",
        teacher_path,
        "--beam",
        "2",
        "--max-len-b",
        "12",
        "--remove-bpe",
        "sentencepiece",
        "--batch-size",
        "5",
        "--num-threads",
        "1",
    ]
    seqkd.main([*argv, "--destdir", str(base)])
    calls, real = [], seqkd_lib.decode_sample

    def decode(model, sample, **kw):  # the run is stopped while decoding its 3rd batch
        calls.append(len(sample["id"]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(model, sample, **kw)

    out = root / "distilled_resumed"
    monkeypatch.setattr(seqkd_lib, "decode_sample", decode)
    with pytest.raises(KeyboardInterrupt):
        seqkd.main([*argv, "--destdir", str(out)])
    assert (
        len(list((out / "train.partial").glob("part*.npz"))) == 1
        and not (out / "train.tgt").exists()
    )
    with pytest.raises(SystemExit):  # other settings: refused, the parts are kept
        run_cli(
            "nmt-sd-seqkd", seqkd.main, [*argv, "--destdir", str(out), "--beam", "3"]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings (beam)" in err[0], err
    calls.clear()
    monkeypatch.setattr(
        seqkd_lib,
        "decode_sample",
        lambda model, sample, **kw: calls.append(1) or real(model, sample, **kw),
    )
    seqkd.main([*argv, "--destdir", str(out)])
    # 48 sentences in batches of 5: the 2 finished batches are not decoded again
    assert len(calls) == 8
    for name in (
        "train.src",
        "train.tgt",
        "train.src-tgt.src.bin",
        "train.src-tgt.tgt.bin",
        "train.src-tgt.tgt.idx",
    ):
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    assert not (out / "train.partial").exists()
