"""nmt-sd-seqkd DATA --path TEACHER --destdir OUT: sequence-level knowledge distillation
(Kim & Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016, arXiv 1606.07947).

    y_hat(x) = beam-search argmax_y p_teacher(y | x)    (--seq-inter: argmax over the n-best of sBLEU(y, y_gold))

Translates the training sources of a binarized data directory with the teacher's beam
search and writes, in OUT: ``train.SRC`` / ``train.TGT`` (raw text, detokenized with
``--remove-bpe``, one line per training source, in order), ``train.SRC-TGT.{SRC,TGT}``
binarized (the original source tokens and the teacher's output tokens, with DATA's
dictionaries), and copies of DATA's dictionaries and other splits, so that any nmt-sd run
can train on OUT. Finished sentences are saved every minute in ``OUT/SUBSET.partial/``, so an
interrupted run picks up where it stopped when run again with the same settings.

A multilingual teacher (``--task multilingual_translation``) distils every one of its
``--lang-pairs`` (or the one ``-s/-t`` pair) with its own language tags, into
``SUBSET.SRC-TGT.{SRC,TGT}`` raw and binarized files per pair, so a multilingual run can
train on OUT. ``--seq-inter`` keeps the beam candidate closest to the reference by
sentence BLEU (sacrebleu.sentence_bleu on the detokenized text; ties go to the better
model score); it considers ``--nbest`` candidates, by default all ``--beam``.
"""

import logging
import os

from nmt_sd.cli.common import run_cli
from nmt_sd.criterions.kd_teacher import load_teacher
from nmt_sd.errors import NmtSdError
from nmt_sd.generation.inference import (
    add_batching_args,
    add_generation_args,
    add_inter_threads_arg,
    setup_inference_device,
)
from nmt_sd.generation.load import half_precision_linears
from nmt_sd.generation.seqkd import distil_pair, teacher_task
from nmt_sd.options import ArgumentParser

logger = logging.getLogger("nmt_sd.seqkd")


def get_parser():
    p = ArgumentParser(
        prog="nmt-sd-seqkd", description="Write a sequence-level KD training set."
    )
    p.add_argument("data", help="directory of binarized data (from nmt-sd-preprocess)")
    p.add_argument(
        "--destdir", required=True, metavar="DIR", help="output data directory"
    )
    p.add_argument(
        "--subset",
        default="train",
        metavar="SPLIT",
        help="split to distil (default: train)",
    )
    p.add_argument(
        "--seq-inter",
        action="store_true",
        help="keep the n-best candidate with the highest sentence BLEU against the reference",
    )
    add_batching_args(p)
    add_generation_args(p)
    add_inter_threads_arg(p)
    p.set_defaults(nbest=None)  # resolved in main: --beam with --seq-inter, else 1
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    if not os.path.isdir(args.data):
        raise NmtSdError(f"data directory not found: {args.data}")
    if os.path.realpath(args.destdir) == os.path.realpath(args.data):
        raise NmtSdError(
            "--destdir must differ from DATA (it would overwrite the training set)"
        )
    args.nbest = args.nbest or (args.beam if args.seq_inter else 1)
    device = setup_inference_device(args)
    task, pairs = teacher_task(args)
    model, _ = load_teacher(args.path, task.src_dict, task.tgt_dict, "--path")
    half_precision_linears(model.to(device), args.bf16, args.fp16)
    n = sum(distil_pair(model, task, args, device, pair) for pair in pairs)
    names = (
        " of " + ",".join(f"{s}-{t}" for s, t in pairs)
        if hasattr(task, "select_pair")
        else ""
    )
    logger.info(
        f"wrote the distilled {args.subset} set{names} ({n} pairs) and copies of the other splits "
        f"to {args.destdir}"
    )


def cli_main(argv=None) -> None:
    run_cli("nmt-sd-seqkd", main, argv)


if __name__ == "__main__":
    cli_main()
