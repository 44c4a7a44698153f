"""Checkpoint files: fairseq names, atomic writes, plain-typed contents
(``torch.load(path, weights_only=True)`` works), clear errors on bad files."""

import glob
import logging
import os
import re
import shutil
from typing import Dict, List, Optional

import torch

from nmt_sd.errors import NmtSdError

logger = logging.getLogger(__name__)
CHECKPOINT_VERSION = 1


def atomic_save(obj: Dict, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_copy(src: str, dst: str) -> None:
    """A copy, not a hard link: each checkpoint file stays independent, as in fairseq, so a user who
    rewrites one in place cannot change another."""
    tmp = f"{dst}.tmp{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def remove_stale_tmp(save_dir: str) -> None:
    """Delete partial checkpoint*.pt.tmp<pid> files left by a run killed while saving."""
    own = f".tmp{os.getpid()}"
    for p in glob.glob(os.path.join(save_dir, "checkpoint*.pt.tmp*")):
        if not p.endswith(own):
            os.remove(p)


def load_checkpoint_file(path: str) -> Dict:
    """Read a checkpoint; any unreadable or foreign file is a one-line NmtSdError."""
    if not os.path.isfile(path):
        raise NmtSdError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NmtSdError(
            f"cannot read checkpoint {path} (corrupt or not an nmt-sd checkpoint): {msg}"
        )
    if not isinstance(state, dict) or "model" not in state or "args" not in state:
        raise NmtSdError(
            f"{path} is not an nmt-sd checkpoint (no 'model'/'args' entries)"
        )
    return state


def load_model_state(model: torch.nn.Module, state_dict: Dict, path: str) -> None:
    """Load weights, naming the first missing/unexpected/mis-shaped key on mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise NmtSdError(
            f"checkpoint {path} does not match the model ({what}; "
            f"{len(missing)} missing, {len(unexpected)} unexpected keys): wrong --arch or data?"
        )
    for k, v in state_dict.items():
        if own[k].shape != v.shape:
            raise NmtSdError(
                f"checkpoint {path} does not match the model: '{k}' has shape "
                f"{tuple(v.shape)} in the checkpoint but {tuple(own[k].shape)} in the model "
                "(different --arch or dictionary?)"
            )
    model.load_state_dict(state_dict)


def epoch_checkpoints(save_dir: str) -> List[str]:
    """checkpoint{N}.pt files, newest epoch first."""
    paths = glob.glob(os.path.join(save_dir, "checkpoint*.pt"))
    found = [
        (int(m.group(1)), p)
        for p in paths
        if (m := re.fullmatch(r"checkpoint(\d+)\.pt", os.path.basename(p)))
    ]
    return [p for _, p in sorted(found, reverse=True)]


def update_checkpoints(save_dir: str) -> List[str]:
    """checkpoint_{epoch}_{updates}.pt files, most updates first."""
    paths = glob.glob(os.path.join(save_dir, "checkpoint_*_*.pt"))
    found = [
        (int(m.group(2)), p)
        for p in paths
        if (m := re.fullmatch(r"checkpoint_(\d+)_(\d+)\.pt", os.path.basename(p)))
    ]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(
    state: Dict,
    save_dir: str,
    epoch: int,
    num_updates: int,
    end_of_epoch: bool,
    is_best: bool,
    args,
) -> List[str]:
    """Write the checkpoints due now (one torch.save, atomic copies for the other names) and
    return their paths in fairseq's order: the epoch or update checkpoint, best, last.

    checkpoint_last.pt is written first: it is what a resumed run reads, so a run killed part-way
    through saving (say, at the end of a session) loses nothing that was already saved.
    """
    names = []
    if (
        end_of_epoch
        and not args.no_epoch_checkpoints
        and epoch % args.save_interval == 0
    ):
        names.append(f"checkpoint{epoch}.pt")
    if (
        not end_of_epoch
        and args.save_interval_updates > 0
        and num_updates % args.save_interval_updates == 0
    ):
        names.append(f"checkpoint_{epoch}_{num_updates}.pt")
    if is_best:
        names.append("checkpoint_best.pt")
    if not args.no_last_checkpoints:
        names.append("checkpoint_last.pt")
    if not names:
        return []
    os.makedirs(save_dir, exist_ok=True)
    paths = [os.path.join(save_dir, n) for n in names]
    first, *rest = sorted(paths, key=lambda p: not p.endswith("checkpoint_last.pt"))
    atomic_save(state, first)
    for p in rest:
        atomic_copy(first, p)
    prune(save_dir, args)
    remove_stale_tmp(save_dir)
    return paths


def prune(save_dir: str, args) -> None:
    if args.keep_last_epochs > 0:
        for p in epoch_checkpoints(save_dir)[args.keep_last_epochs :]:
            os.remove(p)
    if args.keep_interval_updates > 0:
        for p in update_checkpoints(save_dir)[args.keep_interval_updates :]:
            os.remove(p)


def find_restore_file(args) -> Optional[str]:
    path = args.restore_file
    if not os.path.isabs(path):
        path = os.path.join(args.save_dir, path)
    if os.path.isfile(path):
        return path
    if args.restore_file != "checkpoint_last.pt":
        raise NmtSdError(f"--restore-file not found: {path}")
    return None


def plain_args(args) -> dict:
    """``vars(args)`` with plain types only, so checkpoints load with weights_only=True."""
    out = {}
    for k, v in vars(args).items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = list(v)
    return out
