"""Train one joint SentencePiece model (Kudo & Richardson, 2018, arXiv 1808.06226).

The model is trained on ``train.{src}`` + ``train.{tgt}`` of ``--input-dir`` and saved
as ``OUT/spm.model`` / ``OUT/spm.vocab``; every split found (``{split}.{lang}``) is
encoded into ``OUT/{split}.{lang}`` as space-separated pieces, for nmt-sd-preprocess.

Special symbols: ``unk_id=0`` and no ``<s>``, ``</s>`` or ``<pad>`` pieces (``bos_id``,
``eos_id``, ``pad_id`` = -1). The fairseq-style ``dict.txt`` built from the encoded text
adds its own ``<s> <pad> </s> <unk>``, so no spm control symbol can collide with them or
appear as a token. ``<unk>`` is the only reserved piece and never appears in the output:
unknown characters are emitted as their surface form (the dictionary maps them to unk).

Decoding is fairseq's ``--remove-bpe sentencepiece``: see ``remove_sentencepiece``.
A ``.done`` marker stores the options and input checksums; a rerun with the same ones
does nothing, any change retrains. The model depends on ``--workers`` (sentencepiece's
parallel training), so the default is a fixed 1 rather than the number of cores.
"""

import argparse
import logging
from pathlib import Path

import sentencepiece

from data_prep import (
    clear_marker,
    count_summary,
    is_done,
    sha256_file,
    write_lines,
    write_marker,
)
from data_prep.readers import read_parallel
from nmt_sd.cli.common import run_cli
from nmt_sd.errors import NmtSdError

logger = logging.getLogger("data_prep.spm")

SPIECE_UNDERLINE = "\u2581"


def remove_sentencepiece(line: str) -> str:
    """Pieces back to text, as fairseq's ``--remove-bpe sentencepiece``."""
    return line.replace(" ", "").replace(SPIECE_UNDERLINE, " ").strip()


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="data_prep.spm", description=__doc__.split("\n")[0]
    )
    p.add_argument("--input-dir", required=True, help="directory with {split}.{lang}")
    p.add_argument("--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--src", required=True, help="source language suffix")
    p.add_argument("--tgt", required=True, help="target language suffix")
    p.add_argument("--splits", default="train,valid,test", help="comma-separated")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument(
        "--model-type", default="unigram", choices=("unigram", "bpe", "char", "word")
    )
    p.add_argument("--character-coverage", type=float, default=1.0)
    p.add_argument(
        "--input-sentence-size",
        type=int,
        default=0,
        help="train on a random sample of this many sentences (0 = all)",
    )
    p.add_argument("--workers", type=int, default=1, help="sentencepiece threads")
    p.add_argument("--seed", type=int, default=1, help="sentencepiece random seed")
    return p


def find_splits(in_dir: Path, splits: list[str], langs: tuple[str, str]) -> list[str]:
    """Splits with both sides present; train is required, a lone side is an error."""
    found = []
    for split in splits:
        paths = [in_dir / f"{split}.{lang}" for lang in langs]
        present = [p.is_file() for p in paths]
        if all(present):
            found.append(split)
        elif any(present) or split == "train":
            missing = paths[present.index(False)]
            raise NmtSdError(f"--input-dir: {missing} not found")
        else:
            logger.warning("split %s not found in %s: skipped", split, in_dir)
    return found


def train(files: list[Path], prefix: Path, args: argparse.Namespace) -> None:
    sentencepiece.set_random_generator_seed(args.seed)
    try:
        sentencepiece.SentencePieceTrainer.train(
            input=[str(f) for f in files],
            model_prefix=str(prefix),
            vocab_size=args.vocab_size,
            model_type=args.model_type,
            character_coverage=args.character_coverage,
            input_sentence_size=args.input_sentence_size,
            shuffle_input_sentence=True,
            num_threads=args.workers,
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            minloglevel=0 if logger.isEnabledFor(logging.DEBUG) else 1,
        )
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise NmtSdError(
            f"sentencepiece training failed (--vocab-size etc.): {msg}"
        ) from e


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    in_dir, out = Path(args.input_dir), Path(args.output)
    if not in_dir.is_dir():
        raise NmtSdError(f"--input-dir not found: {in_dir}")
    if args.src == args.tgt:
        raise NmtSdError(f"--src and --tgt are both {args.src!r}")
    langs = (args.src, args.tgt)
    splits = find_splits(in_dir, [s for s in args.splits.split(",") if s], langs)
    inputs = [in_dir / f"{split}.{lang}" for split in splits for lang in langs]
    options = {k: v for k, v in vars(args).items() if k not in ("output", "splits")}
    options["splits"] = splits
    options["sha256"] = {p.name: sha256_file(p) for p in inputs}
    outputs = [out / "spm.model"] + [out / p.name for p in inputs]
    if is_done(out, options, outputs):
        logger.info("already done: %s (delete %s/.done to redo)", out, out)
        return
    # Validate every split first (UTF-8, alignment, non-empty): names file and line.
    data = {
        split: read_parallel(*(in_dir / f"{split}.{lg}" for lg in langs))
        for split in splits
    }
    out.mkdir(parents=True, exist_ok=True)
    clear_marker(out)
    train_files = [in_dir / f"train.{lang}" for lang in langs]
    logger.info(
        "training %s spm (vocab %d) on %s",
        args.model_type,
        args.vocab_size,
        " + ".join(map(str, train_files)),
    )
    train(train_files, out / "spm", args)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(out / "spm.model"))
    for split, pair in data.items():
        for lang, lines in zip(langs, pair, strict=True):
            pieces = sp.encode(lines, out_type=str, num_threads=args.workers)
            write_lines(out / f"{split}.{lang}", (" ".join(p) for p in pieces))
    write_marker(out, options)
    logger.info("wrote %s", count_summary(outputs[1:]))


def cli_main(argv: list[str] | None = None) -> None:
    run_cli("data_prep.spm", main, argv)


if __name__ == "__main__":
    cli_main()
