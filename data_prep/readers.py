"""Readers for raw corpora: WIT3/IWSLT XML and ``train.tags`` files, parallel text.

The WIT3 parsing replicates fairseq's ``examples/translation/prepare-iwslt14.sh``:

* XML dev/test sets: ``grep '<seg id' | sed -e 's/<seg id="[0-9]*">\\s*//g'
  -e 's/\\s*<\\/seg>\\s*//g' -e "s/\\’/\\'/g"``. As in that recipe, XML entities
  such as ``&amp;`` are **not** unescaped (the recipe's Moses tokenizer then escapes
  them again). The text is also stripped, which the recipe's tokenizer does too.
* ``train.tags``: drop lines containing ``<url>``, ``<talkid>`` or ``<keywords>`` (the
  fairseq IWSLT14 list; the 2014-01 README documents only those tags plus ``<title>``
  and ``<description>``, whose tags are removed and text kept). WIT3 releases from 2016
  add ``<speaker>``, ``<reviewer>``, ``<translator>`` and ``<doc>`` lines: pass
  ``drop=WIT3_2016_DROP`` (the list of fairseq's ``prepare-iwslt17-multilingual.sh``).
"""

import gzip
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from nmt_sd.cli.common import check_file, read_lines
from nmt_sd.errors import NmtSdError

FAIRSEQ_IWSLT14_DROP = ("<url>", "<talkid>", "<keywords>")
WIT3_2016_DROP = FAIRSEQ_IWSLT14_DROP + (
    "<speaker>",
    "<reviewer",
    "<translator",
    "<doc",
    "</doc>",
)
STRIP_TAGS = ("<title>", "</title>", "<description>", "</description>")

# Like GNU sed's \s, match ASCII whitespace only (Python's \s also matches U+3000).
_SEG_OPEN = re.compile(r'<seg id="[0-9]*">\s*', re.ASCII)
_SEG_CLOSE = re.compile(r"\s*</seg>\s*", re.ASCII)
_TOKENIZE_13A = Tokenizer13a()


def read_text(path: Path, what: str = "file") -> list[str]:
    """Lines of a UTF-8 file, gunzipped if named ``*.gz``; bad bytes name file:line."""
    path = str(path)
    if not path.endswith(".gz"):
        return read_lines(path, what)
    check_file(path, what)
    lines = []
    try:
        with gzip.open(path, "rb") as f:
            for i, raw in enumerate(f, start=1):
                try:
                    lines.append(raw.decode("utf-8").rstrip("\r\n"))
                except UnicodeDecodeError as e:
                    raise NmtSdError(
                        f"{path}:{i}: invalid UTF-8 ({e.reason} at byte {e.start})"
                    ) from e
    except (OSError, EOFError, zlib.error) as e:
        raise NmtSdError(f"{path}: not a valid gzip file ({e})") from e
    return lines


def read_wit3_xml(path: Path) -> list[str]:
    """Segments of a WIT3 ``.xml`` dev/test file, in file order (see the module doc)."""
    segs = []
    for line in read_text(path, "WIT3 XML file"):
        if "<seg id" not in line:
            continue
        text = _SEG_CLOSE.sub("", _SEG_OPEN.sub("", line))
        segs.append(text.replace("\u2019", "'").strip())
    if not segs:
        raise NmtSdError(
            f"{path}: no <seg id=...> lines (empty or not a WIT3 XML file)"
        )
    return segs


def read_wit3_tags(path: Path, drop: Sequence[str] = FAIRSEQ_IWSLT14_DROP) -> list[str]:
    """Text lines of a WIT3 ``train.tags.x-y.x`` file: metadata out, tags stripped."""
    out = []
    for line in read_text(path, "WIT3 tags file"):
        if any(tag in line for tag in drop):
            continue
        for tag in STRIP_TAGS:
            line = line.replace(tag, "")
        out.append(line.strip())
    if not out:
        raise NmtSdError(f"{path}: no text lines (empty corpus)")
    return out


def check_aligned(src_path: Path, n_src: int, tgt_path: Path, n_tgt: int) -> None:
    """Raise if two sides of a parallel corpus differ in length (names both files)."""
    if n_src != n_tgt:
        raise NmtSdError(
            f"misaligned parallel files: {src_path} has {n_src} lines "
            f"but {tgt_path} has {n_tgt}"
        )


def read_parallel(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    """Both sides of a line-aligned corpus; refuses misaligned or empty files."""
    src, tgt = read_text(src_path), read_text(tgt_path)
    check_aligned(src_path, len(src), tgt_path, len(tgt))
    if not src:
        raise NmtSdError(f"empty corpus: {src_path} and {tgt_path} have no lines")
    return src, tgt


def count_tokens(line: str) -> int:
    """Token count with sacreBLEU's 13a tokenizer (a stand-in for Moses')."""
    return len(_TOKENIZE_13A(line).split())


def clean_pairs(
    src: Sequence[str],
    tgt: Sequence[str],
    min_len: int = 1,
    max_len: int = 175,
    ratio: float = 1.5,
) -> tuple[list[str], list[str]]:
    """Moses ``clean-corpus-n.perl -ratio R corpus s t out MIN MAX``, untokenized.

    Whitespace is collapsed; a pair is dropped if either side has fewer than ``min_len``
    or more than ``max_len`` tokens, or if either length ratio exceeds ``ratio``.
    """
    if min_len < 1:
        raise ValueError("min_len must be >= 1 (the ratio test divides by lengths)")
    out_src, out_tgt = [], []
    for s, t in zip(src, tgt, strict=True):
        s, t = " ".join(s.split()), " ".join(t.split())
        ns, nt = count_tokens(s), count_tokens(t)
        if min(ns, nt) < min_len or max(ns, nt) > max_len:
            continue
        if ns / nt > ratio or nt / ns > ratio:
            continue
        out_src.append(s)
        out_tgt.append(t)
    return out_src, out_tgt


def split_every(lines: Sequence[str], n: int = 23) -> tuple[list[str], list[str]]:
    """(rest, every n-th line), numbered from 1 like the recipe's ``awk 'NR%23==0'``."""
    rest = [x for i, x in enumerate(lines, start=1) if i % n != 0]
    every = [x for i, x in enumerate(lines, start=1) if i % n == 0]
    return rest, every
