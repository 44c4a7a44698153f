"""nmt-sd-preprocess: build ``dict.{lang}.txt`` and binarize splits (fairseq-preprocess flags).

Output in ``--destdir``: ``dict.SRC.txt``, ``dict.TGT.txt`` and, per split,
``{split}.SRC-TGT.{SRC,TGT}.{bin,idx}`` (memory-mapped), plus ``preprocess.log``.
"""

import logging
import os

from nmt_sd.cli.common import check_file, read_lines, run_cli
from nmt_sd.data.dictionary import Dictionary, binarize
from nmt_sd.data.indexed_dataset import write_indexed
from nmt_sd.errors import NmtSdError
from nmt_sd.options import ArgumentParser

logger = logging.getLogger("nmt_sd.preprocess")


def get_parser():
    p = ArgumentParser(
        prog="nmt-sd-preprocess", description="Build dictionaries and binarize data."
    )
    p.add_argument("-s", "--source-lang", required=True, metavar="SRC")
    p.add_argument("-t", "--target-lang", metavar="TGT")
    p.add_argument(
        "--trainpref", metavar="FP", help="train file prefix (PREFIX.SRC, PREFIX.TGT)"
    )
    p.add_argument("--validpref", metavar="FP", help="comma-separated valid prefixes")
    p.add_argument("--testpref", metavar="FP", help="comma-separated test prefixes")
    p.add_argument("--destdir", default="data-bin", metavar="DIR")
    p.add_argument("--joined-dictionary", action="store_true", help="one dictionary")
    p.add_argument("--srcdict", metavar="FP", help="reuse this source dictionary")
    p.add_argument("--tgtdict", metavar="FP", help="reuse this target dictionary")
    p.add_argument("--thresholdsrc", type=int, default=0, metavar="N")
    p.add_argument("--thresholdtgt", type=int, default=0, metavar="N")
    p.add_argument("--nwordssrc", type=int, default=-1, metavar="N")
    p.add_argument("--nwordstgt", type=int, default=-1, metavar="N")
    p.add_argument("--padding-factor", type=int, default=8, metavar="N")
    p.add_argument("--only-source", action="store_true")
    p.add_argument("--workers", type=int, default=1, metavar="N")
    p.add_argument("--dataset-impl", default="mmap", choices=["mmap"], help="(fairseq)")
    return p


def split_prefixes(args):
    """(split name, file prefix): train, valid, valid1, ..., test, test1, ..."""
    prefixes = {"train": args.trainpref, "valid": args.validpref, "test": args.testpref}
    for split, prefs in prefixes.items():
        for i, pref in enumerate(p for p in (prefs or "").split(",") if p):
            yield (split if i == 0 else f"{split}{i}"), pref


def load_corpora(args):
    """Read every split (validating UTF-8, alignment and non-emptiness) once."""
    langs = [args.source_lang] + ([] if args.only_source else [args.target_lang])
    corpora = {}
    for split, pref in split_prefixes(args):
        sides = {
            lang: read_lines(
                check_file(f"{pref}.{lang}", f"{split} file"), f"{split} file"
            )
            for lang in langs
        }
        counts = {f"{pref}.{lang}": len(lines) for lang, lines in sides.items()}
        if len(set(counts.values())) > 1:
            desc = ", ".join(f"{path} has {n} lines" for path, n in counts.items())
            raise NmtSdError(f"misaligned parallel files: {desc}")
        if split == "train" and not next(iter(counts.values())):
            raise NmtSdError(f"empty training corpus: {', '.join(counts)}")
        corpora[split] = sides
    if "train" not in corpora and not (
        args.srcdict and (args.tgtdict or args.joined_dictionary or args.only_source)
    ):
        raise NmtSdError("--trainpref is required unless --srcdict/--tgtdict are given")
    return corpora


def build_dicts(args, corpora):
    """(source dictionary, target dictionary or None): loaded from --srcdict/--tgtdict,
    else built from the training text with the --threshold*/--nwords* limits."""
    train, src, tgt = corpora.get("train", {}), args.source_lang, args.target_lang

    def load_or_build(path, lines, threshold, nwords):
        if path:
            return Dictionary.load(path)
        return Dictionary.build(lines, threshold, nwords, args.padding_factor)

    if args.joined_dictionary:
        lines = train.get(src, []) + train.get(tgt, [])
        d = load_or_build(args.srcdict, lines, args.thresholdsrc, args.nwordssrc)
        return d, d
    src_dict = load_or_build(
        args.srcdict, train.get(src), args.thresholdsrc, args.nwordssrc
    )
    if args.only_source:
        return src_dict, None
    tgt_dict = load_or_build(
        args.tgtdict, train.get(tgt), args.thresholdtgt, args.nwordstgt
    )
    return src_dict, tgt_dict


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    if not args.only_source and not args.target_lang:
        raise NmtSdError("--target-lang is required (or --only-source)")
    corpora = load_corpora(args)
    os.makedirs(args.destdir, exist_ok=True)
    src_dict, tgt_dict = build_dicts(args, corpora)
    dicts = {args.source_lang: src_dict}
    if tgt_dict is not None:
        dicts[args.target_lang] = tgt_dict
    for lang, d in dicts.items():
        d.save(os.path.join(args.destdir, f"dict.{lang}.txt"))
        logger.info(f"[{lang}] dictionary: {len(d)} types")
    pair = args.source_lang
    if args.target_lang:
        pair = f"{args.source_lang}-{args.target_lang}"
    report = []
    for split, sides in corpora.items():
        for lang, lines in sides.items():
            d = dicts[lang]
            arrays = binarize(lines, d, args.workers)
            ntok = sum(len(a) for a in arrays)
            nunk = sum(int((a == d.unk()).sum()) for a in arrays)
            prefix = os.path.join(args.destdir, f"{split}.{pair}.{lang}")
            write_indexed(prefix, arrays, len(d))
            msg = (
                f"[{lang}] {split}: {len(arrays)} sents, {ntok} tokens, "
                f"{100.0 * nunk / max(ntok, 1):.3f}% replaced by <unk>"
            )
            logger.info(msg)
            report.append(msg)
    with open(os.path.join(args.destdir, "preprocess.log"), "w", encoding="utf-8") as f:
        f.write("\n".join(report) + "\n")
    logger.info(f"wrote binarized data to {args.destdir}")


def cli_main(argv=None) -> None:
    run_cli("nmt-sd-preprocess", main, argv)


if __name__ == "__main__":
    cli_main()
