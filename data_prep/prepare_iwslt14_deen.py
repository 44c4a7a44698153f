"""IWSLT14 German-English raw splits: fairseq's ``prepare-iwslt14.sh``, untokenized.

Writes ``OUT/{train,valid,test}.{de,en}`` (cased unless ``--lowercase``):

* train/valid come from ``train.tags.de-en.{de,en}`` (``readers.read_wit3_tags``),
  cleaned like Moses ``clean-corpus-n.perl -ratio 1.5 ... 1 175``. We do not
  Moses-tokenize, so tokens are counted with **sacreBLEU's 13a tokenizer as a stand-in
  for Moses tokenization**: 13a keeps apostrophes inside words ("don't") and escapes
  nothing, so a few borderline pairs may be kept or dropped differently from fairseq's
  160,239 + 7,283 pairs. valid = every 23rd cleaned pair (``awk 'NR%23==0'``), train =
  the rest.
* test = dev2010 + TEDX.dev2012 + tst2010 + tst2011 + tst2012, concatenated in that
  order (887 + 1,165 + 1,565 + 1,433 + 1,700 = 6,750 pairs).

``--input`` is a URL (default: fairseq's mirror of the WIT3 2014-01 archive), a local
``.tgz`` or an extracted directory (or its parent holding ``de-en/``). Downloads and
extractions go to ``OUT/orig``. ``--test-only`` writes only ``test.*`` (for directories
with just the XML sets). A ``.done`` marker holding the options makes reruns no-ops.
"""

import argparse
import logging
import tarfile
from pathlib import Path

from data_prep import (
    check_known_sha256,
    clear_marker,
    count_summary,
    download,
    is_done,
    write_lines,
    write_marker,
)
from data_prep.readers import (
    check_aligned,
    clean_pairs,
    read_wit3_tags,
    read_wit3_xml,
    split_every,
)
from nmt_sd.cli.common import run_cli
from nmt_sd.errors import NmtSdError

logger = logging.getLogger("data_prep.prepare_iwslt14_deen")

DEFAULT_URL = "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"
LANGS = ("de", "en")
TEST_SETS = (
    "IWSLT14.TED.dev2010",
    "IWSLT14.TEDX.dev2012",
    "IWSLT14.TED.tst2010",
    "IWSLT14.TED.tst2011",
    "IWSLT14.TED.tst2012",
)
# sha256 prefixes of the WIT3 2014-01 release files (from ../shared/data/README.md).
KNOWN_SHA256_PREFIX = {
    "IWSLT14.TED.dev2010.de-en.de.xml": "6bb2e8272bc49a4f",
    "IWSLT14.TED.dev2010.de-en.en.xml": "5c860ebb64d4ecdc",
    "IWSLT14.TED.tst2010.de-en.de.xml": "5648c0a3a6e5eb3a",
    "IWSLT14.TED.tst2010.de-en.en.xml": "fa9ce190959320cb",
    "IWSLT14.TED.tst2011.de-en.de.xml": "a70163216273ab56",
    "IWSLT14.TED.tst2011.de-en.en.xml": "d350eac4cb6f0cf3",
    "IWSLT14.TED.tst2012.de-en.de.xml": "edf69bd9e41acd93",
    "IWSLT14.TED.tst2012.de-en.en.xml": "cd73e997ce078699",
    "IWSLT14.TEDX.dev2012.de-en.de.xml": "e818a77a43e18ec4",
    "IWSLT14.TEDX.dev2012.de-en.en.xml": "a5de03e0e18cf5ad",
}
Pairs = tuple[list[str], list[str]]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_iwslt14_deen", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--input", default=DEFAULT_URL, help="URL, .tgz or extracted directory"
    )
    p.add_argument("--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--lowercase", action="store_true", help="lowercase every split")
    p.add_argument("--test-only", action="store_true", help="write only test.{de,en}")
    return p


def locate_input(spec: str, work_dir: Path) -> tuple[Path, bool]:
    """The directory holding the de-en files, and whether we downloaded them."""
    downloaded = spec.startswith(("http://", "https://"))
    if downloaded:
        work_dir.mkdir(parents=True, exist_ok=True)
        path = download(spec, work_dir / spec.rsplit("/", 1)[-1])
    else:
        path = Path(spec)
    if not path.exists():
        raise NmtSdError(f"--input not found: {path}")
    if path.is_file():
        logger.info("extracting %s into %s", path, work_dir)
        try:
            with tarfile.open(path) as tar:
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(work_dir, **kwargs)
        except (tarfile.TarError, OSError) as e:
            raise NmtSdError(f"--input {path}: cannot extract ({e})") from e
        path = work_dir
    first = f"{TEST_SETS[0]}.de-en.de.xml"
    for cand in (path, path / "de-en"):
        if (cand / first).is_file():
            return cand, downloaded
    raise NmtSdError(f"--input {spec}: no {first} in {path} or {path / 'de-en'}")


def read_test(orig: Path, strict: bool) -> Pairs:
    sides: dict[str, list[str]] = {lang: [] for lang in LANGS}
    for name in TEST_SETS:
        paths = {lang: orig / f"{name}.de-en.{lang}.xml" for lang in LANGS}
        segs = {}
        for lang, path in paths.items():
            segs[lang] = read_wit3_xml(path)
            check_known_sha256(path, KNOWN_SHA256_PREFIX[path.name], strict)
        check_aligned(paths["de"], len(segs["de"]), paths["en"], len(segs["en"]))
        logger.info("%s: %d segments", name, len(segs["de"]))
        for lang in LANGS:
            sides[lang] += segs[lang]
    return sides["de"], sides["en"]


def train_paths(orig: Path) -> list[Path]:
    paths = [orig / f"train.tags.de-en.{lang}" for lang in LANGS]
    for path in paths:
        if not path.is_file():
            raise NmtSdError(
                f"training file not found: {path}; pass --test-only for test.* only"
            )
    return paths


def read_train(paths: list[Path]) -> Pairs:
    de, en = (read_wit3_tags(p) for p in paths)
    check_aligned(paths[0], len(de), paths[1], len(en))
    n_raw = len(de)
    de, en = clean_pairs(de, en, min_len=1, max_len=175, ratio=1.5)
    logger.info(
        "train.tags: kept %d of %d pairs after length/ratio cleaning", len(de), n_raw
    )
    return de, en


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    out = Path(args.output)
    splits = ["test"] if args.test_only else ["train", "valid", "test"]
    outputs = [out / f"{s}.{lang}" for s in splits for lang in LANGS]
    options = {
        "input": args.input,
        "lowercase": args.lowercase,
        "test_only": args.test_only,
    }
    if is_done(out, options, outputs):
        logger.info("already done: %s (delete %s/.done to redo)", out, out)
        return
    orig, downloaded = locate_input(args.input, out / "orig")
    tags = None if args.test_only else train_paths(orig)  # fail before any work
    out.mkdir(parents=True, exist_ok=True)
    data = {"test": read_test(orig, strict=downloaded)}
    if tags:
        (de_train, de_valid), (en_train, en_valid) = map(split_every, read_train(tags))
        data["train"], data["valid"] = (de_train, en_train), (de_valid, en_valid)
    clear_marker(out)
    for split, pair in data.items():
        for lang, lines in zip(LANGS, pair, strict=True):
            write_lines(
                out / f"{split}.{lang}",
                [x.lower() for x in lines] if args.lowercase else lines,
            )
    for stale in {"train", "valid"} - set(data):  # left by an earlier full run
        for lang in LANGS:
            (out / f"{stale}.{lang}").unlink(missing_ok=True)
    write_marker(out, options)
    logger.info("wrote %s", count_summary(outputs))


def cli_main(argv: list[str] | None = None) -> None:
    run_cli("prepare_iwslt14_deen", main, argv)


if __name__ == "__main__":
    cli_main()
