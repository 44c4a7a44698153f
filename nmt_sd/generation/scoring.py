"""Corpus BLEU and chrF2 with sacreBLEU, always with the signature.

sacreBLEU: Post, 2018, "A Call for Clarity in Reporting BLEU Scores", arXiv 1804.08771.

Two modes, never to be compared with each other:

* ``sacrebleu`` (default): detokenized hypotheses against raw references with
  sacreBLEU's defaults (``13a``, mixed case). This is the number to report.
* ``tokenized_bleu``: a compatibility mode for papers that report tokenized, lowercased
  BLEU (e.g. IWSLT14 de-en with ``multi-bleu.perl``). It uses **sacreBLEU's own
  tokenizers** (``13a``, ``intl``, or ``none`` for text that is already tokenized) and
  lowercases by default. It approximates, but does not equal, multi-bleu or
  compound-split BLEU: Moses splits ``it's`` into ``it 's`` and escapes ``&``, 13a does
  neither, and compound splitting (``Haus @-@ Tür``) is not done at all.
"""

import sacrebleu

from nmt_sd.errors import NmtSdError

try:  # the names sacreBLEU itself accepts; private, hence the fallback
    from sacrebleu.metrics.bleu import _TOKENIZERS as _SACREBLEU_TOKENIZERS
except ImportError:  # pragma: no cover
    _SACREBLEU_TOKENIZERS = (
        "none",
        "zh",
        "13a",
        "intl",
        "char",
        "ja-mecab",
        "ko-mecab",
    )

MODES = ("sacrebleu", "tokenized_bleu")
TOKENIZERS = tuple(_SACREBLEU_TOKENIZERS)
TOKENIZED_BLEU_TOKENIZERS = ("13a", "intl", "none")


def score_corpus(
    hyps: list[str],
    refs: list[str],
    mode: str = "sacrebleu",
    lowercase: bool | None = None,
    chrf: bool = True,
    tokenize: str | None = None,
) -> dict:
    """Corpus-level BLEU (and chrF2) of ``hyps`` against one reference each.

    Args:
        hyps: system outputs, one string per sentence (``<unk>``, empty lines are fine).
        refs: references, aligned with ``hyps``.
        mode: ``sacrebleu`` or ``tokenized_bleu`` (see the module docstring).
        lowercase: case-insensitive scoring; None means the mode's default (False for
            ``sacrebleu``, True for ``tokenized_bleu``).
        chrf: also compute chrF2 (character n-grams; tokenization does not apply).
        tokenize: a sacreBLEU tokenizer name; None means ``13a``.

    Returns:
        ``{"bleu", "chrf", "bleu_signature", "chrf_signature", "bleu_str", "mode"}``;
        the chrF entries are None when ``chrf`` is False.
    """
    _check_inputs(hyps, refs, mode)
    if lowercase is None:
        lowercase = mode == "tokenized_bleu"
    bleu = _bleu_metric(mode, tokenize or "13a", lowercase)
    bleu_score = bleu.corpus_score(hyps, [refs])
    result = {
        "mode": mode,
        "bleu": bleu_score.score,
        "bleu_str": str(bleu_score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf": None,
        "chrf_signature": None,
    }
    if chrf:
        chrf_metric = sacrebleu.CHRF(lowercase=lowercase)
        result["chrf"] = chrf_metric.corpus_score(hyps, [refs]).score
        result["chrf_signature"] = str(chrf_metric.get_signature())
    return result


def _check_inputs(hyps: list[str], refs: list[str], mode: str) -> None:
    """Refuse an unknown mode, misaligned files and an empty corpus."""
    if mode not in MODES:
        raise NmtSdError(
            f"unknown scoring mode {mode!r} (choose from {', '.join(MODES)})"
        )
    if len(hyps) != len(refs):
        raise NmtSdError(
            f"hypotheses and references differ in length: "
            f"{len(hyps)} vs {len(refs)} lines"
        )
    if not hyps:
        raise NmtSdError("nothing to score: 0 hypotheses and 0 references")


def _bleu_metric(mode: str, tokenize: str, lowercase: bool) -> sacrebleu.BLEU:
    """sacreBLEU's BLEU with a tokenizer the mode allows (an NmtSdError otherwise)."""
    allowed = TOKENIZED_BLEU_TOKENIZERS if mode == "tokenized_bleu" else TOKENIZERS
    if tokenize not in allowed:
        raise NmtSdError(
            f"--tokenize {tokenize!r} is not available in {mode} mode "
            f"(choose from {', '.join(allowed)})"
        )
    try:
        return sacrebleu.BLEU(tokenize=tokenize, lowercase=lowercase)
    except Exception as e:  # e.g. ja-mecab without its optional dependency
        msg = " ".join(str(e).split())
        raise NmtSdError(
            f"--tokenize {tokenize}: cannot build tokenizer ({msg})"
        ) from e


def format_result(result: dict) -> list[str]:
    """Printable lines: BLEU, chrF2, then both signatures (always shown)."""
    lines = [result["bleu_str"]]
    if result["mode"] == "tokenized_bleu":
        lines[
            0
        ] += "  [tokenized_bleu: approximates multi-bleu; not sacreBLEU-comparable]"
    if result["chrf"] is not None:
        lines.append(f"chrF2 = {result['chrf']:.2f}")
    lines.append(f"sacreBLEU signature: {result['bleu_signature']}")
    if result["chrf_signature"] is not None:
        lines.append(f"chrF2 signature: {result['chrf_signature']}")
    return lines
