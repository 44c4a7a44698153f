"""argparse is the only source of truth. Two phases: parse the component names
(task, arch, criterion), add those components' flags and the arch preset as
defaults, then parse everything (unknown flags are an error naming the flag)."""

import argparse
import os
import sys

from nmt_sd.errors import NmtSdError


class ArgumentParser(argparse.ArgumentParser):
    """Errors end in one line (``prog: error: ...``) instead of usage + error."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def str2floats(s: str):
    try:
        return [float(x) for x in s.strip("()[] ").replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers like '(0.9, 0.98)', got {s!r}"
        )


def add_common_args(p) -> None:
    g = p.add_argument_group("Common")
    g.add_argument("--seed", type=int, default=1, metavar="N")
    g.add_argument("--cpu", action="store_true", help="CPU even if CUDA is there")
    g.add_argument("--fp16", action="store_true", help="fp16 AMP, loss scaling (CUDA)")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast, fp32 weights")
    g.add_argument(
        "--num-threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads (default: cores available / local processes)",
    )
    g.add_argument(
        "--cpu-allocator",
        choices=["retain", "system"],
        default="retain",
        help="CPU training: 'retain' makes glibc keep freed memory, so the large tensors "
        "of each step do not page-fault in again (default); 'system' leaves malloc as it is",
    )
    g.add_argument("--log-interval", type=int, default=100, metavar="N")
    g.add_argument("--log-format", choices=["json", "simple", "tqdm", "none"])
    g.add_argument("--no-progress-bar", action="store_true")
    g.add_argument("--log-file", metavar="FILE", help="also write log lines to FILE")


def add_dataset_args(p, train: bool = True) -> None:
    g = p.add_argument_group("Dataset and data loading")
    g.add_argument("--task", default="translation")
    g.add_argument("--max-tokens", type=int, metavar="N", help="max tokens per batch")
    batch_size = dict(type=int, metavar="N", dest="batch_size")
    g.add_argument("--batch-size", "--max-sentences", **batch_size)
    g.add_argument("--required-batch-size-multiple", type=int, default=8, metavar="N")
    g.add_argument("--skip-invalid-size-inputs-valid-test", action="store_true")
    if train:
        g.add_argument("--train-subset", default="train")
        g.add_argument("--valid-subset", default="valid")
        g.add_argument("--max-tokens-valid", type=int, metavar="N")
        g.add_argument("--batch-size-valid", type=int, metavar="N")


def add_optimization_args(p) -> None:
    g = p.add_argument_group("Optimization")
    g.add_argument("--optimizer", choices=["adam"], default="adam")
    g.add_argument("--lr", type=float, default=5e-4, metavar="LR")
    g.add_argument("--adam-betas", type=str2floats, default=[0.9, 0.999], metavar="B")
    g.add_argument("--adam-eps", type=float, default=1e-8, metavar="E")
    g.add_argument("--weight-decay", "--wd", type=float, default=0.0, metavar="WD")
    g.add_argument("--clip-norm", type=float, default=0.0, metavar="NORM")
    g.add_argument("--lr-scheduler", choices=["inverse_sqrt", "fixed"], default="fixed")
    g.add_argument("--warmup-updates", type=int, default=4000, metavar="N")
    g.add_argument("--warmup-init-lr", type=float, default=-1, metavar="LR")
    g.add_argument("--max-update", type=int, default=0, metavar="N", help="0: no limit")
    g.add_argument("--max-epoch", type=int, default=0, metavar="N", help="0 = no limit")
    g.add_argument("--update-freq", type=int, default=1, metavar="N")
    g.add_argument("--stop-min-lr", type=float, default=-1.0, metavar="LR")


def add_checkpoint_args(p) -> None:
    g = p.add_argument_group("Checkpointing")
    g.add_argument("--save-dir", default="checkpoints", metavar="DIR")
    g.add_argument("--restore-file", default="checkpoint_last.pt", metavar="FILE")
    g.add_argument("--reset-optimizer", action="store_true")
    g.add_argument("--save-interval", type=int, default=1, metavar="N", help="epochs")
    g.add_argument("--save-interval-updates", type=int, default=0, metavar="N")
    g.add_argument("--keep-interval-updates", type=int, default=-1, metavar="N")
    g.add_argument("--keep-last-epochs", type=int, default=-1, metavar="N")
    g.add_argument("--no-epoch-checkpoints", action="store_true")
    g.add_argument("--no-last-checkpoints", action="store_true")
    g.add_argument("--no-save", action="store_true")
    g.add_argument(
        "--patience",
        type=int,
        default=-1,
        metavar="N",
        help="stop after N validations without improvement",
    )
    g.add_argument("--best-checkpoint-metric", default="loss")
    g.add_argument("--maximize-best-checkpoint-metric", action="store_true")
    g.add_argument(
        "--metrics-log",
        metavar="FILE",
        help="JSON-lines metrics log (default: SAVE_DIR/metrics.jsonl)",
    )


def get_training_parser():
    from nmt_sd.criterions import CRITERIONS
    from nmt_sd.models import ARCH_PRESETS
    from nmt_sd.training.init_from_teacher import add_init_args
    from nmt_sd.training.validate import add_validation_args

    p = ArgumentParser(prog="nmt-sd-train", description="Train a translation model.")
    p.add_argument("data", help="directory of binarized data (from nmt-sd-preprocess)")
    p.add_argument("-s", "--source-lang", metavar="SRC")
    p.add_argument("-t", "--target-lang", metavar="TGT")
    p.add_argument(
        "--arch",
        "-a",
        default="transformer",
        metavar="ARCH",
        help=f"one of: {', '.join(sorted(ARCH_PRESETS))}",
    )
    p.add_argument(
        "--criterion",
        default="label_smoothed_cross_entropy",
        metavar="NAME",
        help=f"one of: {', '.join(CRITERIONS.names())}",
    )
    p.add_argument(
        "--terms",
        default="",
        metavar="T1,T2",
        help="extra objective terms to combine with --criterion (e.g. rdrop,lssd)",
    )
    add_common_args(p)
    add_dataset_args(p)
    add_optimization_args(p)
    add_checkpoint_args(p)
    add_validation_args(p)
    add_init_args(p)
    return p


def parse_training_args(argv=None):
    from nmt_sd.criterions import CRITERIONS
    from nmt_sd.models import add_model_args, apply_arch_preset
    from nmt_sd.tasks import TASKS

    p = get_training_parser()
    known, _ = p.parse_known_args(argv)
    task = TASKS.get(known.task)
    if hasattr(task, "add_args"):
        task.add_args(p)
    add_model_args(p)
    crit = CRITERIONS.get(known.criterion)
    crit.add_args(p)
    if hasattr(crit, "add_term_args"):
        crit.add_term_args(p, known.criterion, known.terms)
    apply_arch_preset(p, known.arch)
    args = p.parse_args(argv)
    check_training_args(args)
    return args


def check_training_args(args) -> None:
    if args.max_tokens is None and args.batch_size is None:
        raise NmtSdError("give --max-tokens or --batch-size")
    if args.fp16 and args.bf16:
        raise NmtSdError("--fp16 and --bf16 are exclusive")
    if args.update_freq < 1:
        raise NmtSdError("--update-freq must be >= 1")
    if len(args.adam_betas) != 2:
        raise NmtSdError("--adam-betas needs two numbers, e.g. '(0.9, 0.98)'")
    if args.max_update <= 0 and args.max_epoch <= 0 and args.patience <= 0:
        raise NmtSdError(
            "give --max-update, --max-epoch or --patience, else training never stops"
        )
    if args.best_checkpoint_metric == "bleu" and not args.eval_bleu:
        raise NmtSdError("--best-checkpoint-metric bleu needs --eval-bleu")
    if args.num_threads is not None and args.num_threads < 1:
        raise NmtSdError("--num-threads must be >= 1")
    if getattr(args, "lang_pairs", None) is not None and (
        args.source_lang or args.target_lang
    ):
        raise NmtSdError(
            "-s/-t select one pair for generation; multilingual training uses every --lang-pairs pair"
        )
    args.save_dir = os.path.abspath(args.save_dir)
