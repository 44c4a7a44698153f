"""data_prep: WIT3 readers, Multi30k/IWSLT14 raw prep, joint spm, user errors."""

import gzip
import html
import logging
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import sentencepiece

from data_prep import prepare_iwslt14_deen, prepare_multi30k, spm
from data_prep.readers import (
    WIT3_2016_DROP,
    clean_pairs,
    count_tokens,
    read_parallel,
    read_text,
    read_wit3_tags,
    read_wit3_xml,
    split_every,
)
from nmt_sd.errors import NmtSdError

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NMT_SD_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path


def write(path: Path, lines, gz: bool = False) -> Path:
    data = "".join(x + "\n" for x in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def xml(segs) -> list:
    head = ['<?xml version="1.0" encoding="UTF-8"?>', "<mteval>", '<doc docid="1">']
    head += ["<url>http://x</url>", "<talkid>1</talkid>", "<title>T</title>"]
    body = [f'<seg id="{i}"> {s} </seg>' for i, s in enumerate(segs, start=1)]
    return head + body + ["</doc>", "</mteval>"]


def assert_one_line_cli_error(capsys, run, *needles):
    """Through run_cli: exit 2, one stderr line naming the problem, no traceback."""
    with pytest.raises(SystemExit) as e:
        run()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert str(needle) in err, (needle, err)


# --- readers --------------------------------------------------------------------------


def test_read_wit3_xml_follows_the_fairseq_sed(tmp_path):
    lines = xml(["Hello  world.", "It\u2019s R&amp;D.", "x"])
    lines.insert(4, "<description>not a segment</description>")
    segs = read_wit3_xml(write(tmp_path / "a.xml", lines))
    # Stripped; \u2019 -> ' as the recipe's sed; entities kept, inner spacing kept.
    assert segs == ["Hello  world.", "It's R&amp;D.", "x"]


def test_read_wit3_tags_drops_metadata_lines(tmp_path):
    lines = [
        "<url>http://www.ted.com/talks/x.html</url>",
        "<keywords>talks</keywords>",
        "<speaker>Jane Doe</speaker>",
        "<talkid>1</talkid>",
        "<title>A title</title>",
        "<description>TED talk: about it</description>",
        "  First sentence.  ",
        "Second one.",
    ]
    path = write(tmp_path / "train.tags.de-en.en", lines)
    keep = ["<speaker>Jane Doe</speaker>", "A title", "TED talk: about it"]
    assert read_wit3_tags(path) == keep + ["First sentence.", "Second one."]
    # Releases from 2016 on also have <speaker>/<reviewer>/<translator>/<doc> lines.
    assert read_wit3_tags(path, drop=WIT3_2016_DROP)[0] == "A title"


def test_download_refuses_a_web_page_and_keeps_no_file(tmp_path):
    from data_prep import download

    # a dead address answering with HTML
    page = tmp_path / "served" / "ted_talks.tar.gz"
    page.parent.mkdir()
    page.write_text(
        "\n  <!DOCTYPE html>\n<html><head><title>Graham Neubig</title></head></html>\n"
    )
    dest = tmp_path / "orig" / "ted_talks.tar.gz"
    dest.parent.mkdir()
    with pytest.raises(NmtSdError, match="returned a web page") as e:
        download(page.as_uri(), dest)
    # no cache to trip a rerun
    assert "\n" not in str(e.value) and not list(dest.parent.iterdir())
    archive = tmp_path / "served" / "ok.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        # an archive holding HTML text is still an archive
        tar.add(page, arcname="x.txt")
    assert download(archive.as_uri(), tmp_path / "orig" / "ok.tar.gz").is_file()


def test_clean_pairs_length_and_ratio():
    long = " ".join(["w"] * 176)
    src = ["a b c", "", "a b c", "a b c d", long, long[2:], "Hi, you."]
    tgt = ["x y z", "x", "x y", "x y", long, long[2:], "Hallo du !"]
    # kept: 3/3 tokens; 3/2 = 1.5 (not > 1.5); 175/175; 4/3 (13a splits "," and ".").
    # dropped: empty side; 4/2 > 1.5; 176 > 175.
    out_src, out_tgt = clean_pairs(src, tgt)
    assert out_src == ["a b c", "a b c", long[2:], "Hi, you."]
    assert count_tokens("Hi, you.") == 4 and count_tokens("Hallo du !") == 3
    assert clean_pairs(["a  b\t c"], ["x y z"]) == (["a b c"], ["x y z"])


def test_split_every_23rd_line_is_valid():
    rest, every = split_every([str(i) for i in range(1, 47)])
    assert every == ["23", "46"] and len(rest) == 44 and "22" in rest and "24" in rest


def test_read_text_gz(tmp_path):
    assert read_text(write(tmp_path / "a.gz", ["ä", "b"], gz=True)) == ["ä", "b"]
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(NmtSdError, match="bad.gz: not a valid gzip"):
        read_text(tmp_path / "bad.gz")


@pytest.mark.parametrize(
    "case, needles",
    [
        ("misaligned", ["a.de has 3 lines", "a.en has 2"]),
        ("missing", ["not found", "a.en"]),
        ("empty", ["empty corpus", "a.de"]),
        ("bad_utf8", ["a.en:2: invalid UTF-8"]),
    ],
)
def test_read_parallel_errors_are_one_line(tmp_path, case, needles):
    write(tmp_path / "a.de", ["1", "2", "3"] if case == "misaligned" else ["1", "2"])
    if case == "empty":
        write(tmp_path / "a.de", [])
        write(tmp_path / "a.en", [])
    elif case == "bad_utf8":
        (tmp_path / "a.en").write_bytes(b"ok\n\xff\xfe\n")
    elif case != "missing":
        write(tmp_path / "a.en", ["1", "2"])
    with pytest.raises(NmtSdError) as e:
        read_parallel(tmp_path / "a.de", tmp_path / "a.en")
    assert "\n" not in str(e.value)
    for needle in needles:
        assert needle in str(e.value)


# --- Multi30k -------------------------------------------------------------------------


def fake_multi30k(root: Path) -> Path:
    root.mkdir()
    for name, n in (("train", 30), ("val", 3), ("test_2016_flickr", 2)):
        write(root / f"{name}.en", [f"A dog runs {i}." for i in range(n)])
        gz = name == "train"  # one split gzipped, as in the release
        path = root / (f"{name}.de.gz" if gz else f"{name}.de")
        write(path, [f"Ein Hund läuft {i}." for i in range(n)], gz=gz)
    return root


def test_multi30k_prep_and_idempotence(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    src = fake_multi30k(tmp_path / "m30k")
    out = tmp_path / "out"
    argv = ["--src", "de", "--tgt", "en", "--input", str(src), "--output", str(out)]
    prepare_multi30k.main(argv)
    assert read_text(out / "train.de")[1] == "Ein Hund läuft 1."
    assert read_text(out / "valid.en") == read_text(src / "val.en")
    assert len(read_text(out / "test.de")) == 2
    assert "differs from the public release" in caplog.text  # fake data: warning only
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    caplog.clear()
    prepare_multi30k.main(argv)
    assert "already done" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    prepare_multi30k.main(argv + ["--lowercase"])  # other options: redone
    assert read_text(out / "train.de")[0] == "ein hund läuft 0."


@pytest.mark.parametrize(
    "case", ["no_dir", "missing", "misaligned", "bad_utf8", "empty"]
)
def test_multi30k_cli_errors(tmp_path, capsys, case):
    src = fake_multi30k(tmp_path / "m30k")
    needles = {
        "no_dir": ["--input directory not found", "nowhere"],
        "missing": ["Multi30k file not found", "val.en"],
        "misaligned": ["val.de has 3 lines", "val.en has 2"],
        "bad_utf8": ["val.en:2: invalid UTF-8"],
        "empty": ["empty corpus", "val.de"],
    }[case]
    if case == "missing":
        (src / "val.en").unlink()
    elif case == "misaligned":
        write(src / "val.en", ["a", "b"])
    elif case == "bad_utf8":
        (src / "val.en").write_bytes(b"a\n\xc3\x28\nc\n")
    elif case == "empty":
        write(src / "val.de", [])
        write(src / "val.en", [])
    input_dir = tmp_path / "nowhere" if case == "no_dir" else src
    argv = ["--src", "de", "--tgt", "en", "--input", str(input_dir)]
    argv += ["--output", str(tmp_path / "out")]
    assert_one_line_cli_error(capsys, lambda: prepare_multi30k.cli_main(argv), *needles)


def test_multi30k_python_m_entry_point(tmp_path):
    cmd = [sys.executable, "-m", "data_prep.prepare_multi30k", "--src", "de"]
    cmd += ["--tgt", "en", "--input", str(tmp_path / "nope"), "--output", str(tmp_path)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"prepare_multi30k: error: --input directory not found: {tmp_path / 'nope'}"
    ]


# --- IWSLT14 --------------------------------------------------------------------------


def fake_iwslt(root: Path, with_train: bool = True) -> Path:
    """A tiny WIT3-like de-en directory: 50 training lines (+ metadata), 5 test sets."""
    root.mkdir(parents=True)
    for i, name in enumerate(prepare_iwslt14_deen.TEST_SETS):
        write(
            root / f"{name}.de-en.de.xml", xml([f"Satz {i}.{j}" for j in range(i + 1)])
        )
        write(
            root / f"{name}.de-en.en.xml",
            xml([f"Sentence {i}.{j}" for j in range(i + 1)]),
        )
    if with_train:
        meta = ["<url>u</url>", "<keywords>k</keywords>", "<talkid>1</talkid>"]
        de = [f"Das ist Satz {i}." for i in range(50)]
        en = [f"This is sentence {i}." for i in range(50)]
        de[10] = "Zu lang"  # 2 vs 5 tokens: ratio > 1.5, dropped
        write(root / "train.tags.de-en.de", meta + ["<title>Titel</title>"] + de)
        write(root / "train.tags.de-en.en", meta + ["<title>Title</title>"] + en)
    return root


def test_iwslt14_from_tgz(tmp_path):
    fake_iwslt(tmp_path / "src" / "de-en")
    tgz = tmp_path / "de-en.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(tmp_path / "src" / "de-en", arcname="de-en")
    out = tmp_path / "out"
    prepare_iwslt14_deen.main(["--input", str(tgz), "--output", str(out)])
    # cleaned: title + 50 lines - sentence 10 = 50 pairs; valid = cleaned lines 23 and
    # 46, i.e. sentences 22 and 45 (line k holds sentence k-2 up to 9, then k-1).
    train, valid = read_text(out / "train.en"), read_text(out / "valid.en")
    assert len(train) == 48 and valid == [
        "This is sentence 22.",
        "This is sentence 45.",
    ]
    assert train[0] == "Title" and "This is sentence 10." not in train
    test_en = read_text(out / "test.en")
    assert len(test_en) == 15 and test_en[0] == "Sentence 0.0"  # 1+2+3+4+5 segments
    assert (
        test_en[1:3] == ["Sentence 1.0", "Sentence 1.1"]
        and test_en[-1] == "Sentence 4.4"
    )


def test_iwslt14_test_only_and_missing_train(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    src = fake_iwslt(tmp_path / "src", with_train=False)
    out = tmp_path / "out"
    argv = ["--input", str(src), "--output", str(out), "--lowercase"]
    assert_one_line_cli_error(
        capsys,
        lambda: prepare_iwslt14_deen.cli_main(argv),
        f"training file not found: {src / 'train.tags.de-en.de'}",
        "--test-only",
    )
    prepare_iwslt14_deen.main(argv + ["--test-only"])
    assert sorted(p.name for p in out.iterdir()) == [".done", "test.de", "test.en"]
    assert read_text(out / "test.de")[0] == "satz 0.0"
    caplog.clear()
    prepare_iwslt14_deen.main(argv + ["--test-only"])
    assert "already done" in caplog.text


def test_iwslt14_misaligned_xml(tmp_path, capsys):
    src = fake_iwslt(tmp_path / "src", with_train=False)
    bad = src / "IWSLT14.TED.tst2011.de-en.en.xml"
    write(bad, xml(["only one"]))
    argv = ["--input", str(src), "--output", str(tmp_path / "o"), "--test-only"]
    assert_one_line_cli_error(
        capsys,
        lambda: prepare_iwslt14_deen.cli_main(argv),
        "has 4 lines",
        f"{bad} has 1",
    )


def test_iwslt14_real_test_set(tmp_path):
    """The standard 6,750-pair test set, in fairseq's order and line-aligned with it."""
    src = shared("iwslt14-de-en")
    fairseq = shared("iwslt14-de-en/fairseq-tokenized-lowercased")
    argv = ["--input", str(src), "--output", str(tmp_path), "--test-only"]
    prepare_iwslt14_deen.main(argv)
    ours = {lang: read_text(tmp_path / f"test.{lang}") for lang in ("de", "en")}
    counts = [887, 1165, 1565, 1433, 1700]  # <seg id lines per file (README, grep -c)
    for name, n in zip(prepare_iwslt14_deen.TEST_SETS, counts, strict=True):
        for lang in ("de", "en"):
            path = src / f"{name}.de-en.{lang}.xml"
            assert path.read_text(encoding="utf-8").count("<seg id") == n
            assert len(read_wit3_xml(path)) == n
    first = read_wit3_xml(src / "IWSLT14.TED.dev2010.de-en.en.xml")[0]
    last = read_wit3_xml(src / "IWSLT14.TED.tst2012.de-en.en.xml")[-1]
    assert ours["en"][0] == first and ours["en"][-1] == last
    for lang, lines in ours.items():
        ref = read_text(fairseq / f"test.{lang}")
        assert len(lines) == len(ref) == 6750

        scores = [jaccard(a, b) for a, b in zip(lines, ref, strict=True)]
        assert sum(j >= 0.5 for j in scores) >= 0.9 * len(scores)
        # Observed: 99.9% identical word sets (the rest: fairseq's double-escaped &amp;)
        assert sum(j == 1.0 for j in scores) >= 0.99 * len(scores)
        shifted = [jaccard(a, b) for a, b in zip(lines[1:], ref, strict=False)]
        # the test has teeth
        assert sum(j >= 0.5 for j in shifted) < 0.05 * len(shifted)


def jaccard(ours: str, moses: str) -> float:
    """Jaccard overlap of lowercased word sets (punctuation and XML escapes ignored)."""
    a, b = (set(re.findall(r"\w+", html.unescape(x).lower())) for x in (ours, moses))
    return len(a & b) / len(a | b) if a | b else 1.0


def test_multi30k_real_data(tmp_path):
    src = shared("multi30k-task1")
    argv = [
        "--src",
        "fr",
        "--tgt",
        "cs",
        "--input",
        str(src),
        "--output",
        str(tmp_path),
    ]
    prepare_multi30k.main(argv)
    sizes = {
        s: len(read_text(tmp_path / f"{s}.cs")) for s in ("train", "valid", "test")
    }
    assert sizes == {"train": 29000, "valid": 1014, "test": 1000}
    assert (tmp_path / "valid.fr").read_bytes() == (src / "val.fr").read_bytes()


# --- SentencePiece --------------------------------------------------------------------

WORDS = "der die das ein Hund Katze läuft springt über den Zaun schnell langsam".split()


def tiny_corpus(root: Path) -> Path:
    root.mkdir()
    for split, n in (("train", 300), ("valid", 5), ("test", 5)):
        de = [
            " ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 8)) for i in range(n)
        ]
        en = [f"the dog {i} jumps over the fence, quickly!" for i in range(n)]
        write(root / f"{split}.de", de)
        write(root / f"{split}.en", en)
    return root


def test_spm_train_encode_roundtrip_and_idempotence(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    raw = tiny_corpus(tmp_path / "raw")
    out = tmp_path / "spm"
    argv = ["--input-dir", str(raw), "--output", str(out), "--src", "de", "--tgt", "en"]
    spm.main(argv + ["--vocab-size", "60"])
    sp = sentencepiece.SentencePieceProcessor(model_file=str(out / "spm.model"))
    assert sp.get_piece_size() == 60 and sp.unk_id() == 0
    assert (sp.bos_id(), sp.eos_id(), sp.pad_id()) == (-1, -1, -1)
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            raw_lines = read_text(raw / f"{split}.{lang}")
            enc = read_text(out / f"{split}.{lang}")
            assert len(enc) == len(raw_lines)
            assert all("\u2581" in line for line in enc)
            assert [spm.remove_sentencepiece(x) for x in enc] == raw_lines
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    caplog.clear()
    spm.main(argv + ["--vocab-size", "60"])
    assert "already done" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    spm.main(argv + ["--vocab-size", "50", "--splits", "train,test"])  # retrains
    sp = sentencepiece.SentencePieceProcessor(model_file=str(out / "spm.model"))
    assert sp.get_piece_size() == 50


def test_remove_sentencepiece_is_fairseqs():
    assert spm.remove_sentencepiece("\u2581Hal lo \u2581Welt !") == "Hallo Welt!"
    assert spm.remove_sentencepiece("\u2581<unk> \u2581x") == "<unk> x"


@pytest.mark.parametrize("case", ["vocab", "misaligned", "no_train"])
def test_spm_cli_errors(tmp_path, capsys, case):
    raw = tiny_corpus(tmp_path / "raw")
    argv = ["--input-dir", str(raw), "--output", str(tmp_path / "o"), "--src", "de"]
    argv += ["--tgt", "en", "--vocab-size", "100000" if case == "vocab" else "60"]
    needles = {
        "vocab": ["sentencepiece training failed", "--vocab-size"],
        "misaligned": ["valid.de has 5 lines", "valid.en has 4"],
        "no_train": ["train.en not found"],
    }[case]
    if case == "misaligned":
        write(raw / "valid.en", ["x"] * 4)
    elif case == "no_train":
        (raw / "train.en").unlink()
    assert_one_line_cli_error(capsys, lambda: spm.cli_main(argv), *needles)


def test_multi30k_shell_wrapper(tmp_path):
    src = fake_multi30k(tmp_path / "m30k")
    out = tmp_path / "out"
    env = dict(os.environ, SRC="de", TGT="en", INPUT=str(src), OUT=str(out), VOCAB="30")
    cmd = ["bash", str(REPO / "data_prep" / "prepare_multi30k.sh")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / "spm" / "spm.model").is_file() and (out / "README.txt").is_file()
    assert len(read_text(out / "spm" / "train.de")) == 30
    assert "vocab 30" in (out / "README.txt").read_text()
