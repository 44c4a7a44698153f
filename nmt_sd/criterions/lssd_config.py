"""The ``--lssd-*`` flags of the LSSD term (``lssd.py``): their definitions, their
validation and the term's resolved arguments. Kept apart so that ``lssd.py`` reads as the
method alone.
"""

from nmt_sd.criterions.lssd_teachers import DTYPES
from nmt_sd.errors import NmtSdError


def add_args(parser) -> None:
    g = parser.add_argument_group("LSSD (language-specific self-distillation)")
    g.add_argument(
        "--lssd-weight",
        type=float,
        default=1.0,
        metavar="W",
        help="w: KD weight; distilled batches get (CE + w KD)/2 (official --online-distillation-weight)",
    )
    g.add_argument(
        "--lssd-gate", choices=["whole", "selective", "adaptive"], default="whole"
    )
    g.add_argument(
        "--lssd-gate-level",
        choices=["token", "sentence"],
        default="token",
        help="gate on each token or on whole sentences (the adaptive scripts use sentence)",
    )
    g.add_argument(
        "--lssd-selective-low",
        type=float,
        default=0.2,
        metavar="G",
        help="selective gate's weight where the teacher is not better (paper: 0.2)",
    )
    g.add_argument(
        "--lssd-warmup-epochs",
        type=int,
        default=1,
        metavar="N",
        help="no distillation in epochs <= N",
    )
    g.add_argument(
        "--lssd-interpolate",
        action="store_true",
        help="(1-w) CE + w KD instead of (CE + w KD)/2",
    )
    g.add_argument(
        "--lssd-language-aware",
        action="store_true",
        help="restrict the teacher to the target language's vocabulary (one-to-many scripts)",
    )
    g.add_argument(
        "--lssd-key",
        choices=["auto", "src", "tgt"],
        default="auto",
        help="a batch's language: auto = source for many-to-one, else target",
    )
    g.add_argument(
        "--lssd-teacher-dtype",
        choices=["auto", *DTYPES],
        default="auto",
        help="teacher copies' precision (auto: the training precision)",
    )


def key_side(pairs: list[tuple[str, str]], choice: str) -> str:
    """Which side names a batch's language: src for many-to-one, else tgt."""
    if choice != "auto":
        return choice
    return "src" if len({t for _, t in pairs}) == 1 else "tgt"


def term_kwargs(args, task) -> dict:
    """Validate the ``--lssd-*`` flags (a one-line NmtSdError naming the flag) and resolve
    them, with the task's pairs and languages, into ``LSSDTerm``'s arguments."""
    if args.lssd_weight < 0 or (args.lssd_interpolate and args.lssd_weight > 1):
        raise NmtSdError(
            f"--lssd-weight must be >= 0 (<= 1 with --lssd-interpolate), got {args.lssd_weight}"
        )
    if not 0.0 <= args.lssd_selective_low <= 1.0 or args.lssd_warmup_epochs < 0:
        raise NmtSdError(
            "--lssd-selective-low must be in [0, 1] and --lssd-warmup-epochs >= 0"
        )
    if getattr(args, "disable_validation", False):
        raise NmtSdError(
            "the lssd term picks teachers by validation loss: remove --disable-validation"
        )
    pairs = list(
        getattr(task, "lang_pairs", None) or [(args.source_lang, args.target_lang)]
    )
    langs = list(getattr(task, "langs", None) or sorted({x for p in pairs for x in p}))
    masks = None
    if args.lssd_language_aware:
        if not hasattr(task, "lang_vocab_mask"):
            raise NmtSdError(
                "--lssd-language-aware needs --task multilingual_translation"
            )
        masks = {
            lang: task.lang_vocab_mask(lang) for lang in sorted({t for _, t in pairs})
        }
    name = args.lssd_teacher_dtype
    if name == "auto":
        name = (
            "bf16"
            if getattr(args, "bf16", False)
            else ("fp16" if getattr(args, "fp16", False) else "fp32")
        )
    save_dir = (
        None if getattr(args, "no_save", False) else getattr(args, "save_dir", None)
    )
    return dict(
        pairs=pairs,
        langs=langs,
        side=key_side(pairs, args.lssd_key),
        weight=args.lssd_weight,
        gate=args.lssd_gate,
        level=args.lssd_gate_level,
        low=args.lssd_selective_low,
        warmup=args.lssd_warmup_epochs,
        interpolate=args.lssd_interpolate,
        teacher_dtype=DTYPES[name],
        save_dir=save_dir,
        padding_idx=task.tgt_dict.pad(),
        lang_masks=masks,
    )
