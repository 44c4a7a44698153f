"""The ``--cmlm-kd-*`` flags of the CBBGCA term (``cmlm_kd.py``): their definitions, their
validation (a one-line NmtSdError naming the flag) and their resolved defaults, returned as
the term's config namespace. Kept apart so that ``cmlm_kd.py`` reads as the method alone.
"""

import argparse
import logging
import math
import os

from nmt_sd.errors import NmtSdError

logger = logging.getLogger("nmt_sd.criterions.cmlm_kd")
GATES = ("threshold", "lowest-k", "none")
SCHEDULES = ("constant", "linear", "cosine", "exponential")
STAGE1_CHECKPOINT = "checkpoint_stage1.pt"


def add_args(parser) -> None:
    g = parser.add_argument_group(
        "CBBGCA: CMLM joint training + confidence-gated KD (docs/cmlm_kd.md)"
    )
    _add_cmlm_args(g)
    _add_gate_args(g)
    _add_teacher_schedule_args(g)


def _add_cmlm_args(g) -> None:
    """Stage 1: the CMLM decoder and the joint training."""
    g.add_argument(
        "--cmlm-kd-decoder-layers",
        type=int,
        metavar="N",
        help="CMLM depth (default: --decoder-layers)",
    )
    g.add_argument(
        "--cmlm-kd-cmlm-weight",
        type=float,
        default=1.0,
        metavar="W",
        help="weight of the CMLM's label-smoothed CE on masked tokens (0: CMLM CE off)",
    )
    g.add_argument(
        "--cmlm-kd-joint-updates",
        type=int,
        metavar="N",
        help="stage 1 (joint training) length in updates (default: --max-update / 2; 0: no stage 1)",
    )


def _add_gate_args(g) -> None:
    """Stage 2: which tokens get KD, and how KD is normalised."""
    g.add_argument(
        "--cmlm-kd-gate",
        choices=GATES,
        default="threshold",
        help="which tokens get KD: confidence < tau, the k%% least confident per sentence, or all",
    )
    g.add_argument(
        "--cmlm-kd-threshold",
        type=float,
        default=0.5,
        metavar="TAU",
        help="tau of the threshold gate",
    )
    g.add_argument(
        "--cmlm-kd-lowest-k",
        type=float,
        default=50.0,
        metavar="K",
        help="percent for lowest-k, in (0, 100]",
    )
    g.add_argument(
        "--cmlm-kd-mask-groups",
        type=int,
        metavar="G",
        help="teacher passes over disjoint groups of the gated tokens (default: 1; 2 with gate none)",
    )
    g.add_argument(
        "--cmlm-kd-norm",
        choices=["gated", "ntokens"],
        default="gated",
        help="KD as the mean over gated tokens, or summed like CE (divided by ntokens)",
    )


def _add_teacher_schedule_args(g) -> None:
    """Stage 2: the teacher, the KD weight and its annealing."""
    g.add_argument(
        "--cmlm-kd-teacher",
        choices=["live", "frozen"],
        default="live",
        help="live: the jointly trained CMLM (detached); frozen: the stage-1 snapshot or a path",
    )
    g.add_argument(
        "--cmlm-kd-teacher-path",
        metavar="CKPT",
        help="frozen teacher: a checkpoint of a cmlm_kd run",
    )
    g.add_argument(
        "--cmlm-kd-continue-cmlm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep training the CMLM in stage 2 (default: on with live, off with frozen)",
    )
    g.add_argument(
        "--cmlm-kd-weight",
        type=float,
        default=1.0,
        metavar="W",
        help="KD weight at stage-2 start (0: KD off)",
    )
    g.add_argument(
        "--cmlm-kd-weight-min",
        type=float,
        default=0.1,
        metavar="W",
        help="KD weight after annealing",
    )
    g.add_argument(
        "--cmlm-kd-anneal",
        choices=SCHEDULES,
        default="linear",
        help="KD weight schedule",
    )
    g.add_argument(
        "--cmlm-kd-anneal-updates",
        type=int,
        metavar="N",
        help="annealing length (default: --max-update minus stage 1)",
    )
    g.add_argument(
        "--cmlm-kd-combine",
        choices=["add", "interpolate"],
        default="add",
        help="add: CE + lam KD; interpolate: (1 - lam) CE + lam KD",
    )


def schedule_lengths(a) -> tuple:
    """(stage-1 updates, annealing updates), their defaults resolved from --max-update."""
    max_update = getattr(a, "max_update", 0) or 0
    joint = a.cmlm_kd_joint_updates
    if joint is None:
        if max_update <= 0:
            raise NmtSdError(
                "--cmlm-kd-joint-updates must be given when --max-update is not"
            )
        joint = max_update // 2
    anneal_updates = a.cmlm_kd_anneal_updates
    if anneal_updates is None:
        if max_update <= 0 and a.cmlm_kd_anneal != "constant" and a.cmlm_kd_weight > 0:
            raise NmtSdError(
                f"--cmlm-kd-anneal-updates must be given with --cmlm-kd-anneal {a.cmlm_kd_anneal} "
                "when --max-update is not"
            )
        anneal_updates = max(max_update - joint, 0)
    return joint, anneal_updates


def _value_checks(a, joint: int, anneal_updates: int, layers: int, groups: int) -> list:
    """(bad, message) for each flag's own range."""
    return [
        (joint < 0, f"--cmlm-kd-joint-updates must be >= 0, got {joint}"),
        (
            anneal_updates < 0,
            f"--cmlm-kd-anneal-updates must be >= 0, got {anneal_updates}",
        ),
        (layers < 1, f"--cmlm-kd-decoder-layers must be >= 1, got {layers}"),
        (
            a.cmlm_kd_cmlm_weight < 0,
            f"--cmlm-kd-cmlm-weight must be >= 0, got {a.cmlm_kd_cmlm_weight}",
        ),
        (
            a.cmlm_kd_gate not in GATES,
            f"--cmlm-kd-gate must be one of {', '.join(GATES)}, got {a.cmlm_kd_gate!r}",
        ),
        (
            not 0.0 <= a.cmlm_kd_threshold <= 1.0,
            f"--cmlm-kd-threshold must be in [0, 1], got {a.cmlm_kd_threshold}",
        ),
        (
            not 0.0 < a.cmlm_kd_lowest_k <= 100.0,
            f"--cmlm-kd-lowest-k must be a percent in (0, 100], got {a.cmlm_kd_lowest_k}",
        ),
        (groups < 1, f"--cmlm-kd-mask-groups must be >= 1, got {groups}"),
        (
            a.cmlm_kd_norm not in ("gated", "ntokens"),
            f"--cmlm-kd-norm must be gated or ntokens, got {a.cmlm_kd_norm!r}",
        ),
        (
            a.cmlm_kd_teacher not in ("live", "frozen"),
            f"--cmlm-kd-teacher must be live or frozen, got {a.cmlm_kd_teacher!r}",
        ),
        (
            a.cmlm_kd_anneal not in SCHEDULES,
            f"--cmlm-kd-anneal must be one of {', '.join(SCHEDULES)}, got {a.cmlm_kd_anneal!r}",
        ),
        (
            a.cmlm_kd_combine not in ("add", "interpolate"),
            f"--cmlm-kd-combine must be add or interpolate, got {a.cmlm_kd_combine!r}",
        ),
        (
            a.cmlm_kd_weight < 0 or a.cmlm_kd_weight_min < 0,
            "--cmlm-kd-weight and --cmlm-kd-weight-min must be >= 0",
        ),
    ]


def _combination_checks(a, joint: int) -> list:
    """(bad, message) for flags that constrain each other."""
    kd_on = a.cmlm_kd_weight > 0
    return [
        (
            kd_on and a.cmlm_kd_weight_min > a.cmlm_kd_weight,
            f"--cmlm-kd-weight-min ({a.cmlm_kd_weight_min}) must be <= --cmlm-kd-weight ({a.cmlm_kd_weight}): the weight decays",
        ),
        (
            kd_on and a.cmlm_kd_anneal == "exponential" and a.cmlm_kd_weight_min <= 0,
            "--cmlm-kd-anneal exponential needs --cmlm-kd-weight-min > 0",
        ),
        (
            a.cmlm_kd_combine == "interpolate" and a.cmlm_kd_weight > 1,
            f"--cmlm-kd-combine interpolate needs --cmlm-kd-weight <= 1 (CE gets 1 - weight), got {a.cmlm_kd_weight}",
        ),
        (
            a.cmlm_kd_teacher_path and a.cmlm_kd_teacher != "frozen",
            "--cmlm-kd-teacher-path needs --cmlm-kd-teacher frozen",
        ),
        (
            a.cmlm_kd_teacher_path and not os.path.isfile(a.cmlm_kd_teacher_path),
            f"--cmlm-kd-teacher-path not found: {a.cmlm_kd_teacher_path}",
        ),
        (
            kd_on
            and a.cmlm_kd_teacher == "frozen"
            and joint == 0
            and not a.cmlm_kd_teacher_path,
            "--cmlm-kd-teacher frozen with --cmlm-kd-joint-updates 0 needs --cmlm-kd-teacher-path",
        ),
    ]


def stage1_checkpoint(args):
    """SAVE_DIR/checkpoint_stage1.pt, where the frozen teacher is kept (None: no saving)."""
    save_dir = getattr(args, "save_dir", None)
    if not save_dir or getattr(args, "no_save", False):
        return None
    return os.path.join(save_dir, STAGE1_CHECKPOINT)


def check_config(args, task) -> argparse.Namespace:
    """Validate the ``--cmlm-kd-*`` flags (one-line NmtSdError naming the flag) and resolve
    their defaults."""
    a = args
    if "<mask>" not in task.tgt_dict.indices:
        raise NmtSdError(
            "--criterion cmlm_kd needs a '<mask>' symbol in the target dictionary (re-run nmt-sd-preprocess)"
        )
    joint, anneal_updates = schedule_lengths(a)
    layers, groups = a.cmlm_kd_decoder_layers, a.cmlm_kd_mask_groups
    layers = a.decoder_layers if layers is None else layers
    groups = (2 if a.cmlm_kd_gate == "none" else 1) if groups is None else groups
    checks = _value_checks(a, joint, anneal_updates, layers, groups)
    checks += _combination_checks(a, joint)
    kd_on = a.cmlm_kd_weight > 0
    for bad, msg in checks:
        if bad:
            raise NmtSdError(msg)
    continue_cmlm = (
        a.cmlm_kd_continue_cmlm
        if a.cmlm_kd_continue_cmlm is not None
        else a.cmlm_kd_teacher == "live"
    )
    if (
        kd_on
        and a.cmlm_kd_teacher == "live"
        and (joint == 0 or a.cmlm_kd_cmlm_weight == 0)
    ):
        logger.warning(
            "cmlm_kd: the live CMLM teacher starts KD untrained (--cmlm-kd-joint-updates 0 or "
            "--cmlm-kd-cmlm-weight 0)"
        )
    stage1_path = stage1_checkpoint(args)
    return argparse.Namespace(
        layers=layers,
        cmlm_weight=a.cmlm_kd_cmlm_weight,
        joint_updates=joint,
        gate=a.cmlm_kd_gate,
        threshold=a.cmlm_kd_threshold,
        lowest_k=a.cmlm_kd_lowest_k,
        mask_groups=groups,
        norm=a.cmlm_kd_norm,
        teacher=a.cmlm_kd_teacher,
        teacher_path=a.cmlm_kd_teacher_path,
        continue_cmlm=continue_cmlm,
        weight=a.cmlm_kd_weight,
        weight_min=a.cmlm_kd_weight_min,
        anneal=a.cmlm_kd_anneal,
        anneal_updates=anneal_updates,
        combine=a.cmlm_kd_combine,
        mask_idx=task.tgt_dict.index("<mask>"),
        stage1_path=stage1_path,
    )


def anneal(schedule: str, start: float, end: float, step: int, total: int) -> float:
    """The KD weight ``step`` updates into stage 2; r = min(step / total, 1) (1 if total <= 0)."""
    r = 1.0 if total <= 0 else min(max(step / total, 0.0), 1.0)
    if schedule == "constant":
        return start
    if schedule == "linear":
        return start + (end - start) * r
    if schedule == "cosine":
        return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * r))
    if schedule == "exponential":
        return start * (end / start) ** r
    raise ValueError(
        f"unknown schedule {schedule!r} (choose from: {', '.join(SCHEDULES)})"
    )
