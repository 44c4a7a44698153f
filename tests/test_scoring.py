"""Scoring: known BLEU values, signatures, chrF, both modes, <unk>, nmt-sd-score CLI."""

import io
import math

import pytest
import sacrebleu

from nmt_sd.cli import score as score_cli
from nmt_sd.errors import NmtSdError
from nmt_sd.generation.scoring import score_corpus

SENTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is riding a red bicycle down the street.",
]
SIG = f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"


def test_perfect_match_is_100_with_signatures():
    r = score_corpus(SENTS, SENTS)
    assert r["bleu"] == pytest.approx(100.0) and r["chrf"] == pytest.approx(100.0)
    assert r["bleu_signature"] == SIG
    assert r["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0")
    assert r["bleu_str"].startswith("BLEU = 100.00 100.0/100.0/100.0/100.0 (BP = 1.000")


def test_hand_checked_bleu():
    # 5 tokens, last one wrong: precisions 4/5, 3/4, 2/3, 1/2; equal lengths, BP 1.
    # BLEU = 100 * (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 100 * 0.2 ** 0.25 = 66.87.
    r = score_corpus(["a b c d e"], ["a b c d f"], chrf=False)
    assert r["bleu"] == pytest.approx(100 * 0.2**0.25)
    assert r["chrf"] is None and r["chrf_signature"] is None
    # All precisions 1, hypothesis 4 tokens vs 5: BP = exp(1 - 5/4).
    r = score_corpus(["a b c d"], ["a b c d e"], chrf=False)
    assert r["bleu"] == pytest.approx(100 * math.exp(-0.25))


def test_tokenized_mode_lowercases_and_says_so():
    hyps = [s.upper() for s in SENTS]
    assert score_corpus(hyps, SENTS)["bleu"] < 10  # sacrebleu mode is cased
    r = score_corpus(hyps, SENTS, mode="tokenized_bleu")
    assert r["bleu"] == pytest.approx(100.0) and r["chrf"] == pytest.approx(100.0)
    assert "case:lc" in r["bleu_signature"] and r["mode"] == "tokenized_bleu"
    cased = score_corpus(hyps, SENTS, mode="tokenized_bleu", lowercase=False)
    assert cased["bleu"] < 10 and "case:mixed" in cased["bleu_signature"]


def test_tokenized_mode_on_pretokenized_text():
    # tokenize=none: the text is already Moses-tokenized, as for multi-bleu.perl.
    tok = ["it &apos;s a test , really ."]
    r = score_corpus(tok, tok, mode="tokenized_bleu", tokenize="none")
    assert r["bleu"] == pytest.approx(100.0) and "tok:none" in r["bleu_signature"]
    with pytest.raises(NmtSdError, match="--tokenize 'zh' is not available"):
        score_corpus(tok, tok, mode="tokenized_bleu", tokenize="zh")


def test_unk_in_hypotheses_scores():  # fairseq #1827, #4134
    hyps = ["The quick brown <unk> jumps over the lazy dog.", "<unk> <unk>", ""]
    refs = SENTS + ["Nothing."]
    for mode in ("sacrebleu", "tokenized_bleu"):
        r = score_corpus(hyps, refs, mode=mode)
        assert 0 < r["bleu"] < 100 and 0 < r["chrf"] < 100


@pytest.mark.parametrize("hyps, refs", [(SENTS, SENTS[:1]), ([], [])])
def test_length_mismatch_and_empty_are_errors(hyps, refs):
    with pytest.raises(NmtSdError) as e:
        score_corpus(hyps, refs)
    assert f"{len(hyps)}" in str(e.value) and f"{len(refs)}" in str(e.value)


def test_cli_prints_bleu_chrf_and_signatures(tmp_path, capsys):
    (tmp_path / "hyp").write_text("a b c d e\n<unk> x\n", encoding="utf-8")
    (tmp_path / "ref").write_text("a b c d f\nA x\n", encoding="utf-8")
    score_cli.cli_main(["--sys", str(tmp_path / "hyp"), "-r", str(tmp_path / "ref")])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("BLEU = ") and out[1].startswith("chrF2 = ")
    assert f"sacreBLEU signature: {SIG}" in out
    assert any(x.startswith("chrF2 signature: nrefs:1|case:mixed") for x in out)


def test_cli_stdin_tokenized_no_chrf(tmp_path, capsys, monkeypatch):
    (tmp_path / "ref").write_text("Hello World !\n", encoding="utf-8")
    stdin = io.TextIOWrapper(io.BytesIO(b"hello world !\n"), encoding="utf-8")
    monkeypatch.setattr("sys.stdin", stdin)
    argv = ["-s", "-", "-r", str(tmp_path / "ref"), "--scoring", "tokenized_bleu"]
    score_cli.cli_main(argv + ["--no-chrf", "--tokenize", "intl"])
    out = capsys.readouterr().out
    assert "tokenized_bleu" in out and "chrF2" not in out
    assert "sacreBLEU signature: nrefs:1|case:lc|eff:no|tok:intl|" in out


def test_cli_mismatch_is_one_line_error(tmp_path, capsys):
    (tmp_path / "hyp").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "ref").write_text("a\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        score_cli.cli_main(["-s", str(tmp_path / "hyp"), "-r", str(tmp_path / "ref")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (
        f"{tmp_path / 'hyp'} has 2 lines" in err and f"{tmp_path / 'ref'} has 1" in err
    )
