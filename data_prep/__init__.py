"""Corpus preparation for nmt-sd: raw splits (IWSLT14 de-en, Multi30k), joint spm.

Each step is ``python -m data_prep.<step>``; the shell wrappers chain them. This module
holds the I/O helpers the steps share: atomic writes, ``.done`` markers, checksums and
downloads.
"""

import gzip
import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

from nmt_sd.errors import NmtSdError

logger = logging.getLogger("data_prep")

MARKER = ".done"


def write_lines(path: Path, lines: Iterable[str]) -> None:
    """Write ``lines`` (no newlines inside) to ``path`` atomically, one per line."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def read_marker(out_dir: Path) -> dict | None:
    """The options stored in ``out_dir/.done``, or None if absent or unreadable."""
    try:
        return json.loads((Path(out_dir) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_done(out_dir: Path, options: dict, outputs: Sequence[Path]) -> bool:
    """True if a previous run with the same ``options`` completed with every output."""
    return read_marker(out_dir) == options and all(Path(p).is_file() for p in outputs)


def clear_marker(out_dir: Path) -> None:
    """Remove the marker, so that an interrupted rerun never looks finished."""
    (Path(out_dir) / MARKER).unlink(missing_ok=True)


def write_marker(out_dir: Path, options: dict) -> None:
    write_lines(Path(out_dir) / MARKER, [json.dumps(options, sort_keys=True)])


def sha256_file(path: Path, decompress: bool = False) -> str:
    """Hex sha256 of a file's bytes (of its decompressed bytes if ``decompress``)."""
    opener = gzip.open if decompress else open
    digest = hashlib.sha256()
    try:
        with opener(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except (OSError, EOFError) as e:
        raise NmtSdError(f"{path}: cannot read ({e})") from e
    return digest.hexdigest()


def check_known_sha256(path: Path, known_prefix: str, strict: bool) -> None:
    """Compare a file (decompressed if .gz) with the public release's sha256 prefix.

    A mismatch is an error for downloaded files (``strict``), a warning for local input.
    """
    actual = sha256_file(path, decompress=str(path).endswith(".gz"))
    if actual.startswith(known_prefix):
        return
    msg = (
        f"{path}: sha256 {actual[:16]} differs from the public release "
        f"({known_prefix}); scores may not be comparable"
    )
    if strict:
        raise NmtSdError(msg)
    logger.warning(msg)


def download(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Download ``url`` to ``dest`` (kept as a cache), log progress, check ``sha256``.

    With no known checksum the file's sha256 is logged, so that it can be pinned later.
    """
    dest = Path(dest)
    if not dest.is_file():
        part = dest.with_name(dest.name + ".part")
        logger.info("downloading %s -> %s", url, dest)
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
                _copy_with_progress(
                    r, f, int(r.headers.get("Content-Length") or 0), url
                )
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise NmtSdError(
                f"cannot download {url} ({e}); without internet pass --input LOCAL_PATH"
            ) from e
        if _is_web_page(part):
            part.unlink()
            raise NmtSdError(
                f"{url} returned a web page, not the file: the address may be gone; "
                "get the data elsewhere and pass --input LOCAL_PATH"
            )
        os.replace(part, dest)
    else:
        logger.info("using cached download %s", dest)
    actual = sha256_file(dest)
    if sha256 is None:
        logger.info("sha256 of %s: %s (no known checksum to compare)", dest, actual)
    elif actual != sha256:
        raise NmtSdError(
            f"{dest}: sha256 {actual} != expected {sha256}; delete it and retry"
        )
    return dest


def _is_web_page(path: Path) -> bool:
    """A dead download address often answers 200 with an HTML page (phontron.com's TED
    archive is reported to): corpora and archives never start with an HTML tag."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def _copy_with_progress(src, dst, total: int, url: str) -> None:
    done, next_report = 0, 0.0
    for block in iter(lambda: src.read(1 << 20), b""):
        dst.write(block)
        done += len(block)
        if total and done / total >= next_report:
            logger.info(
                "  %s: %3.0f%% (%.1f / %.1f MB)",
                url,
                100 * done / total,
                done / 1e6,
                total / 1e6,
            )
            next_report += 0.1
    if not total:
        logger.info("  %s: %.1f MB", url, done / 1e6)


def count_summary(files: list[Path]) -> str:
    """``name: N lines`` for each file, for logs and README.txt."""
    out = []
    for p in files:
        with open(p, "rb") as f:
            out.append(f"{Path(p).name}: {sum(1 for _ in f)} lines")
    return ", ".join(out)
