"""Multilingual corpora for ``--task multilingual_translation``: raw pairs, one joint
SentencePiece model, one joint dictionary with language tags, binarized pairs.

Every pair is ``X-PIVOT`` for X in ``--langs`` (``--pivot`` is English); the task reads
both directions from the same files. Output in ``--output``:

* ``raw/{train,valid,test}.X-PIVOT.{X,PIVOT}``: untokenized text.
* ``spm/spm.{model,vocab}`` (trained on every language's distinct training lines) and
  ``spm/{split}.X-PIVOT.{lang}`` pieces; decode with ``--remove-bpe sentencepiece``.
* ``bin/dict.{lang}.txt`` (one joint dictionary, language tags ``__x__`` included) and
  ``bin/{split}.X-PIVOT.{lang}.{bin,idx}`` (nmt-sd-preprocess), plus ``README.txt``.

Formats (``--format``):

* ``multi30k``: Multi30k task 1 (multi-way parallel en/de/fr/cs); ``--input`` is a
  directory with ``{train,val,test_2016_flickr}.LANG`` (or ``.gz``), empty = download
  (as ``prepare_multi30k``). ``--train-sizes de:15000,fr:5000,cs:1000`` subsamples each
  language's training pairs (seeded), so that languages converge at different speeds.
* ``ted``: the TED corpus of Qi et al. (2018) used by TED-8 (MultiDDS, LSSD). ``--input``
  is a directory of per-pair directories ``X_PIVOT/ted-{train,dev,test}.orig.{X,PIVOT}``
  (the multv-nmt layout), or the original ``ted_talks.tar.gz`` / a directory with its
  ``all_talks_{train,dev,test}.tsv`` (3-letter codes mapped to the TSV's columns), or a
  URL of that archive (default; downloads go to ``OUTPUT/orig``).
* ``iwslt``: WIT3 IWSLT 2017 multilingual releases: ``--input`` is a directory with
  ``X-PIVOT/`` (or ``X-PIVOT.tgz``) holding ``train.tags.X-PIVOT.{X,PIVOT}`` and the
  ``IWSLT17.TED.{dev2010,tst2010}`` XML sets, or a URL prefix the ``X-PIVOT.tgz``
  archives are downloaded from. valid = dev2010, test = tst2010.

Training pairs with an empty side are dropped. ``.done`` markers make reruns no-ops.
"""

import argparse
import csv
import logging
import sys
import tarfile
from pathlib import Path

import numpy as np

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
    WIT3_2016_DROP,
    check_aligned,
    read_parallel,
    read_text,
    read_wit3_tags,
    read_wit3_xml,
)
from nmt_sd.cli.common import run_cli
from nmt_sd.errors import NmtSdError

logger = logging.getLogger("data_prep.prepare_multilingual")
SPLITS = ("train", "valid", "test")
TED_URL = "http://phontron.com/data/ted_talks.tar.gz"
IWSLT_URL = "https://wit3.fbk.eu/archive/2017-01-trnted/texts"
# 3-letter codes of the TED-8 languages -> the column names of all_talks_*.tsv (por -> pt, not
# pt-br, is our reading of the MultiDDS data; the TSV column names match TensorFlow
# Datasets' ted_multi_translate, which reads the same archive)
TED_TSV_CODES = {
    "aze": "az",
    "bel": "be",
    "glg": "gl",
    "slk": "sk",
    "tur": "tr",
    "rus": "ru",
    "por": "pt",
    "ces": "cs",
    "bos": "bs",
    "mar": "mr",
    "hin": "hi",
    "mkd": "mk",
    "ell": "el",
    "bul": "bg",
    "fra": "fr",
    "kor": "ko",
    "eng": "en",
}
Pairs = tuple[list[str], list[str]]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_multilingual", description=__doc__.split("\n")[0]
    )
    p.add_argument("--format", required=True, choices=["multi30k", "ted", "iwslt"])
    p.add_argument(
        "--input",
        default="",
        help="local directory/archive, or URL (empty: the default download)",
    )
    p.add_argument(
        "--langs",
        required=True,
        help="comma-separated non-pivot languages, e.g. de,fr,cs",
    )
    p.add_argument(
        "--pivot", default="en", help="the language every pair shares (en, eng)"
    )
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument(
        "--train-sizes",
        default="",
        metavar="L:N,...",
        help="subsample LANG's training pairs to N",
    )
    p.add_argument(
        "--vocab-size", type=int, default=8000, help="joint SentencePiece vocabulary"
    )
    p.add_argument("--model-type", default="unigram", choices=("unigram", "bpe"))
    p.add_argument(
        "--input-sentence-size",
        type=int,
        default=0,
        help="spm training sample (0 = all)",
    )
    p.add_argument("--lowercase", action="store_true")
    p.add_argument(
        "--seed", type=int, default=1, help="subsampling and sentencepiece seed"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="sentencepiece / binarization workers"
    )
    return p


def parse_sizes(spec: str, langs: list[str]) -> dict[str, int]:
    out = {}
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        lang, _, n = item.partition(":")
        if lang not in langs or not n.isdigit() or int(n) < 1:
            raise NmtSdError(
                f"--train-sizes: bad entry {item!r} (expected LANG:N with LANG in {','.join(langs)})"
            )
        out[lang] = int(n)
    return out


# -- readers ------------------------------------------------------------------
def read_multi30k(
    input_spec: str, lang: str, pivot: str, orig: Path
) -> dict[str, Pairs]:
    from data_prep.prepare_multi30k import (
        KNOWN_SHA256_PREFIX,
        SPLITS as M30K,
        find_file,
    )

    input_dir = Path(input_spec) if input_spec else None
    if input_dir is not None and not input_dir.is_dir():
        raise NmtSdError(f"--input directory not found: {input_dir}")
    out = {}
    for split, name in M30K.items():
        paths = []
        for x in (lang, pivot):
            path, downloaded = find_file(input_dir, f"{name}.{x}", orig)
            check_known_sha256(path, KNOWN_SHA256_PREFIX[f"{name}.{x}"], downloaded)
            paths.append(path)
        out[split] = read_parallel(*paths)
    return out


def locate_archive(spec: str, orig: Path, default_url: str) -> Path:
    """A local path, or the download of a URL (cached in ``orig``); archives extracted."""
    spec = spec or default_url
    if spec.startswith(("http://", "https://")):
        orig.mkdir(parents=True, exist_ok=True)
        spec = str(download(spec, orig / spec.rsplit("/", 1)[-1]))
    path = Path(spec)
    if not path.exists():
        raise NmtSdError(f"--input not found: {path}")
    if path.is_file():
        extract(path, orig)
        return orig
    return path


def extract(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    logger.info("extracting %s into %s", archive, dest)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(
                dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {})
            )
    except (tarfile.TarError, OSError) as e:
        raise NmtSdError(f"--input {archive}: cannot extract ({e})") from e


def read_ted(root: Path, lang: str, pivot: str) -> dict[str, Pairs]:
    """Per-pair directories (multv-nmt layout) or the original all_talks_*.tsv."""
    pair_dir = root / f"{lang}_{pivot}"
    names = {"train": "train", "valid": "dev", "test": "test"}
    if pair_dir.is_dir():
        return {
            s: read_parallel(*(pair_dir / f"ted-{n}.orig.{x}" for x in (lang, pivot)))
            for s, n in names.items()
        }
    tsvs = {
        s: next(iter(sorted(root.rglob(f"all_talks_{n}.tsv"))), None)
        for s, n in names.items()
    }
    if any(p is None for p in tsvs.values()):
        raise NmtSdError(
            f"--input {root}: neither {pair_dir} nor all_talks_{{train,dev,test}}.tsv found"
        )
    return {s: read_ted_tsv(p, lang, pivot) for s, p in tsvs.items()}


def read_ted_tsv(path: Path, lang: str, pivot: str) -> Pairs:
    """Rows of ``all_talks_SPLIT.tsv`` where both columns hold a translation."""
    cols = [TED_TSV_CODES.get(x, x) for x in (lang, pivot)]
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows)
        for c in cols:
            if c not in header:
                raise NmtSdError(f"{path}: no column {c!r} (for --langs/--pivot)")
        ia, ib = (header.index(c) for c in cols)
        src, tgt = [], []
        for row in rows:
            a, b = row[ia].strip(), row[ib].strip()
            if "NULL" in a.replace(" ", "") or "NULL" in b.replace(" ", ""):
                continue  # __NULL__ (no translation) or _ _ NULL _ _
            src.append(a)
            tgt.append(b)
    return src, tgt


def read_iwslt(root: Path, lang: str, pivot: str, orig: Path) -> dict[str, Pairs]:
    pair = f"{lang}-{pivot}"
    pair_dir = root / pair
    if not pair_dir.is_dir() and (root / f"{pair}.tgz").is_file():
        extract(root / f"{pair}.tgz", orig)
        pair_dir = orig / pair
    if not pair_dir.is_dir():
        raise NmtSdError(f"--input {root}: no {pair}/ directory nor {pair}.tgz")
    tags = [pair_dir / f"train.tags.{pair}.{x}" for x in (lang, pivot)]
    train = [read_wit3_tags(p, WIT3_2016_DROP) for p in tags]
    check_aligned(tags[0], len(train[0]), tags[1], len(train[1]))
    out = {"train": tuple(train)}
    for split, name in (("valid", "dev2010"), ("test", "tst2010")):
        xmls = [pair_dir / f"IWSLT17.TED.{name}.{pair}.{x}.xml" for x in (lang, pivot)]
        segs = [read_wit3_xml(p) for p in xmls]
        check_aligned(xmls[0], len(segs[0]), xmls[1], len(segs[1]))
        out[split] = tuple(segs)
    return out


def read_pair(args, lang: str, orig: Path) -> dict[str, Pairs]:
    if args.format == "multi30k":
        return read_multi30k(args.input, lang, args.pivot, orig)
    if args.format == "ted":
        return read_ted(locate_archive(args.input, orig, TED_URL), lang, args.pivot)
    if args.input.startswith(("http://", "https://")) or not args.input:
        base = args.input or IWSLT_URL
        locate_archive(f"{base}/{lang}/{args.pivot}/{lang}-{args.pivot}.tgz", orig, "")
        return read_iwslt(orig, lang, args.pivot, orig)
    return read_iwslt(Path(args.input), lang, args.pivot, orig)


def subsample(pair: Pairs, n: int, seed: int) -> Pairs:
    """n pairs drawn without replacement (seeded), in corpus order."""
    if n >= len(pair[0]):
        return pair
    keep = np.sort(np.random.RandomState(seed).choice(len(pair[0]), n, replace=False))
    return [pair[0][i] for i in keep], [pair[1][i] for i in keep]


def drop_empty(pair: Pairs) -> Pairs:
    kept = [(a, b) for a, b in zip(*pair) if a.strip() and b.strip()]
    return [a for a, _ in kept], [b for _, b in kept]


def write_raw(args, langs: list[str], out: Path) -> list[Path]:
    sizes = parse_sizes(args.train_sizes, langs)
    outputs = []
    for lang in langs:
        data = read_pair(args, lang, out.parent / "orig")
        data["train"] = subsample(
            drop_empty(data["train"]), sizes.get(lang, 1 << 62), args.seed
        )
        for split in SPLITS:
            for x, lines in zip((lang, args.pivot), data[split], strict=True):
                path = out / f"{split}.{lang}-{args.pivot}.{x}"
                write_lines(
                    path, [s.lower() for s in lines] if args.lowercase else lines
                )
                outputs.append(path)
        logger.info(
            "%s-%s: %s",
            lang,
            args.pivot,
            ", ".join(f"{s} {len(data[s][0])}" for s in SPLITS),
        )
    return outputs


# -- sentencepiece and binarization ------------------------------------------------
def train_spm(args, langs: list[str], raw: Path, out: Path) -> None:
    """One joint model over every language's distinct training lines."""
    from data_prep import spm

    files = []
    for x in [*langs, args.pivot]:
        lines = dict.fromkeys(
            line
            for lang in langs
            if x in (lang, args.pivot)
            for line in read_text(raw / f"train.{lang}-{args.pivot}.{x}")
        )
        files.append(out / f"spm_input.{x}")
        write_lines(files[-1], lines)
    ns = argparse.Namespace(
        seed=args.seed,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        character_coverage=1.0,
        input_sentence_size=args.input_sentence_size,
        workers=args.workers,
    )
    spm.train(files, out / "spm", ns)
    for f in files:
        f.unlink()


def encode(args, langs: list[str], raw: Path, out: Path) -> None:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(out / "spm.model"))
    for lang in langs:
        for split in SPLITS:
            for x in (lang, args.pivot):
                name = f"{split}.{lang}-{args.pivot}.{x}"
                pieces = sp.encode(
                    read_text(raw / name), out_type=str, num_threads=args.workers
                )
                write_lines(out / name, (" ".join(p) for p in pieces))


def joint_dictionary(spm_dir: Path, pairs: list[tuple[str, str]]):
    """fairseq dictionary over every training file, plus the language tags, padded to 8."""
    from nmt_sd.data.dictionary import Dictionary
    from nmt_sd.data.multilingual import langtok

    lines = [
        line
        for a, b in pairs
        for x in (a, b)
        for line in read_text(spm_dir / f"train.{a}-{b}.{x}")
    ]
    d = Dictionary.build(lines, padding_factor=1)
    for lang in sorted({x for p in pairs for x in p}):
        d.add_symbol(langtok(lang), 0)
    i = 0
    while len(d) % 8:
        d.add_symbol(f"madeupword{i:04d}", 0)
        i += 1
    return d


def binarize(
    spm_dir: Path, pairs: list[tuple[str, str]], dest: Path, workers: int = 1
) -> None:
    """One joint dictionary, every pair binarized with it (fairseq file names)."""
    from nmt_sd.cli import preprocess

    dest.mkdir(parents=True, exist_ok=True)
    joint_dictionary(spm_dir, pairs).save(str(dest / "dict.txt"))
    for a, b in pairs:
        prefs = {
            s: str(spm_dir / f"{s}.{a}-{b}")
            for s in SPLITS
            if (spm_dir / f"{s}.{a}-{b}.{a}").is_file()
        }
        argv = [
            "-s",
            a,
            "-t",
            b,
            "--destdir",
            str(dest),
            "--srcdict",
            str(dest / "dict.txt"),
            "--joined-dictionary",
            "--workers",
            str(workers),
        ]
        argv += [x for s, pref in prefs.items() for x in (f"--{s}pref", pref)]
        preprocess.main(argv)


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    if not langs or args.pivot in langs or len(set(langs)) != len(langs):
        raise NmtSdError(
            f"--langs {args.langs!r}: give distinct languages other than --pivot {args.pivot}"
        )
    out = Path(args.output)
    options = {k: v for k, v in vars(args).items() if k not in ("output", "workers")}
    raw_out = [
        out / "raw" / f"{s}.{x}-{args.pivot}.{y}"
        for s in SPLITS
        for x in langs
        for y in (x, args.pivot)
    ]
    if not is_done(out / "raw", options, raw_out):
        (out / "raw").mkdir(parents=True, exist_ok=True)
        clear_marker(out / "raw")
        write_raw(args, langs, out / "raw")
        write_marker(out / "raw", options)
    bin_out = [
        out / "bin" / f"{s}.{x}-{args.pivot}.{y}.idx"
        for s in SPLITS
        for x in langs
        for y in (x, args.pivot)
    ]
    if is_done(out / "bin", options, bin_out):
        logger.info(
            "already done: %s (delete %s/.done to redo)", out / "bin", out / "bin"
        )
        return
    (out / "spm").mkdir(parents=True, exist_ok=True)
    clear_marker(out / "bin")
    train_spm(args, langs, out / "raw", out / "spm")
    encode(args, langs, out / "raw", out / "spm")
    binarize(out / "spm", [(x, args.pivot) for x in langs], out / "bin", args.workers)
    write_marker(out / "bin", options)
    logger.info("wrote %s", count_summary(raw_out))


def cli_main(argv: list[str] | None = None) -> None:
    run_cli("prepare_multilingual", main, argv)


if __name__ == "__main__":
    cli_main()
