"""Multi30k task 1 raw splits (Elliott et al., 2016, arXiv 1605.00459), en/de/fr/cs.

Writes ``OUT/{train,valid,test}.{src,tgt}``: train = ``train`` (29,000 pairs), valid =
``val`` (1,014), test = ``test_2016_flickr`` (1,000). Lines are copied unchanged (raw,
cased, untokenized) unless ``--lowercase``.

``--input DIR`` reads ``DIR/{train,val,test_2016_flickr}.{lang}`` or the same names with
``.gz``; without it the gzipped files are downloaded from the multi30k/dataset
repository (pinned commit) into ``OUT/orig``. Files are checked against the sha256 of
the public release: a mismatch fails a download and only warns for local input. A
``.done`` marker holding the options makes reruns no-ops.
"""

import argparse
import logging
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
from data_prep.readers import read_parallel
from nmt_sd.cli.common import run_cli
from nmt_sd.errors import NmtSdError

logger = logging.getLogger("data_prep.prepare_multi30k")

COMMIT = "a3d2e0d26b56f3846f66a952536ffed4e401d05a"
BASE_URL = f"https://raw.githubusercontent.com/multi30k/dataset/{COMMIT}/data/task1/raw"
LANGS = ("en", "de", "fr", "cs")
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
# sha256 prefixes of the gunzipped release files (from ../shared/data/README.md).
KNOWN_SHA256_PREFIX = {
    "test_2016_flickr.cs": "45adb85f688de840",
    "test_2016_flickr.de": "4be6b5b3236b79c2",
    "test_2016_flickr.en": "399a4382932c1aad",
    "test_2016_flickr.fr": "cb3160d69b002bb6",
    "train.cs": "2be68b38c8d586ff",
    "train.de": "2c2b73fd2b548fbc",
    "train.en": "460a15fbd157e34a",
    "train.fr": "5925a3c18f1587b6",
    "val.cs": "d53827e469b0a1ca",
    "val.de": "660e09eb7e1da2f8",
    "val.en": "1f2a23d992769b5b",
    "val.fr": "5304e444d842e962",
}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_multi30k", description=__doc__.split("\n")[0]
    )
    p.add_argument("--src", required=True, choices=LANGS, help="source language")
    p.add_argument("--tgt", required=True, choices=LANGS, help="target language")
    p.add_argument(
        "--input", help="directory with the release files (default: download)"
    )
    p.add_argument("--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--lowercase", action="store_true", help="lowercase every split")
    return p


def find_file(input_dir: Path | None, name: str, orig: Path) -> tuple[Path, bool]:
    """(path, downloaded): ``name`` or ``name.gz`` in ``input_dir``, else a download."""
    if input_dir is None:
        orig.mkdir(parents=True, exist_ok=True)
        return download(f"{BASE_URL}/{name}.gz", orig / f"{name}.gz"), True
    for cand in (input_dir / name, input_dir / f"{name}.gz"):
        if cand.is_file():
            return cand, False
    raise NmtSdError(f"Multi30k file not found: {input_dir / name} (nor {name}.gz)")


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    if args.src == args.tgt:
        raise NmtSdError(f"--src and --tgt are both {args.src!r}; give two languages")
    input_dir = Path(args.input) if args.input else None
    if input_dir is not None and not input_dir.is_dir():
        raise NmtSdError(f"--input directory not found: {input_dir}")
    out = Path(args.output)
    langs = (args.src, args.tgt)
    outputs = [out / f"{split}.{lang}" for split in SPLITS for lang in langs]
    options = {
        "input": args.input or BASE_URL,
        "langs": list(langs),
        "lowercase": args.lowercase,
    }
    if is_done(out, options, outputs):
        logger.info("already done: %s (delete %s/.done to redo)", out, out)
        return
    out.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, name in SPLITS.items():
        paths = []
        for lang in langs:
            path, downloaded = find_file(input_dir, f"{name}.{lang}", out / "orig")
            check_known_sha256(path, KNOWN_SHA256_PREFIX[f"{name}.{lang}"], downloaded)
            paths.append(path)
        data[split] = read_parallel(*paths)
        logger.info("%s: %d pairs from %s", split, len(data[split][0]), paths[0].parent)
    clear_marker(out)
    for split, pair in data.items():
        for lang, lines in zip(langs, pair, strict=True):
            if args.lowercase:
                lines = [x.lower() for x in lines]
            write_lines(out / f"{split}.{lang}", lines)
    write_marker(out, options)
    logger.info("wrote %s", count_summary(outputs))


def cli_main(argv: list[str] | None = None) -> None:
    run_cli("prepare_multi30k", main, argv)


if __name__ == "__main__":
    cli_main()
