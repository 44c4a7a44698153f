"""nmt-sd-score: corpus BLEU/chrF2 of a system output against a reference, like
fairseq-score, but always with the sacreBLEU signature (see nmt_sd.generation.scoring).

    nmt-sd-score --sys hyp.detok.en --ref test.en
    nmt-sd-generate ... | grep ^D- | cut -f3 | nmt-sd-score -s - -r test.en
"""

import argparse
import logging
import sys

from nmt_sd.cli.common import read_lines, run_cli
from nmt_sd.errors import NmtSdError
from nmt_sd.generation.scoring import MODES, TOKENIZERS, format_result, score_corpus

logger = logging.getLogger("nmt_sd.cli.score")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nmt-sd-score", description=__doc__.split("\n")[0])
    p.add_argument("-s", "--sys", required=True, help="system output, '-' for stdin")
    p.add_argument("-r", "--ref", required=True, help="references (raw text)")
    p.add_argument(
        "--scoring",
        default="sacrebleu",
        choices=MODES,
        help="sacrebleu: detokenized vs raw refs (report this); tokenized_bleu: "
        "compatibility mode, lowercased by default",
    )
    p.add_argument(
        "--lowercase",
        action="store_true",
        default=None,
        help="case-insensitive (default: off for sacrebleu, on for tokenized_bleu)",
    )
    p.add_argument("--tokenize", choices=TOKENIZERS, help="sacreBLEU tokenizer (13a)")
    p.add_argument("--no-chrf", action="store_true", help="skip chrF2")
    return p


def read_stdin() -> list[str]:
    lines = []
    for i, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError as e:
            msg = f"<stdin>:{i}: invalid UTF-8 ({e.reason} at byte {e.start})"
            raise NmtSdError(msg) from e
    return lines


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    hyps = read_stdin() if args.sys == "-" else read_lines(args.sys, "--sys file")
    refs = read_lines(args.ref, "--ref file")
    sys_name = "<stdin>" if args.sys == "-" else args.sys
    if len(hyps) != len(refs):
        raise NmtSdError(
            f"--sys {sys_name} has {len(hyps)} lines "
            f"but --ref {args.ref} has {len(refs)}"
        )
    if not hyps:
        raise NmtSdError(f"--sys {sys_name} and --ref {args.ref} are empty")
    result = score_corpus(
        hyps,
        refs,
        mode=args.scoring,
        lowercase=args.lowercase,
        chrf=not args.no_chrf,
        tokenize=args.tokenize,
    )
    for line in format_result(result):
        print(line)


def cli_main(argv: list[str] | None = None) -> None:
    run_cli("nmt-sd-score", main, argv)


if __name__ == "__main__":
    cli_main()
