"""nmt-sd-average-checkpoints: average model weights of several checkpoints (like
fairseq's scripts/average_checkpoints.py). The output holds the averaged model and the
last input's args only (no optimizer), and loads in nmt-sd-generate."""

import collections
import logging
import os

from nmt_sd.cli.common import run_cli
from nmt_sd.errors import NmtSdError
from nmt_sd.options import ArgumentParser
from nmt_sd.training.checkpoint import (
    atomic_save,
    epoch_checkpoints,
    load_checkpoint_file,
    update_checkpoints,
)

logger = logging.getLogger("nmt_sd.average_checkpoints")


def average_states(paths):
    """Element-wise mean of the 'model' entries (float32 accumulation)."""
    total, first = None, None
    for path in paths:
        state = load_checkpoint_file(path)
        model = state["model"]
        if total is None:
            first, total = (
                state,
                collections.OrderedDict(
                    (k, v.double().clone()) for k, v in model.items()
                ),
            )
            continue
        if set(model) != set(total):
            raise NmtSdError(
                f"{path} has different parameters than {paths[0]}: cannot average"
            )
        for k, v in model.items():
            if v.shape != total[k].shape:
                raise NmtSdError(
                    f"{path}: '{k}' has shape {tuple(v.shape)}, {paths[0]} has {tuple(total[k].shape)}"
                )
            total[k] += v.double()
    avg = collections.OrderedDict(
        (k, (v / len(paths)).to(first["model"][k].dtype)) for k, v in total.items()
    )
    return {
        "version": first.get("version", 1),
        "args": first["args"],
        "model": avg,
        "num_updates": first.get("num_updates"),
        "averaged_from": [os.path.basename(p) for p in paths],
    }


def select_inputs(args):
    if args.num_epoch_checkpoints or args.num_update_checkpoints:
        if len(args.inputs) != 1 or not os.path.isdir(args.inputs[0]):
            raise NmtSdError(
                "--num-*-checkpoints needs exactly one directory in --inputs"
            )
        d = args.inputs[0]
        found = (
            epoch_checkpoints(d)
            if args.num_epoch_checkpoints
            else update_checkpoints(d)
        )
        n = args.num_epoch_checkpoints or args.num_update_checkpoints
        if len(found) < n:
            raise NmtSdError(
                f"asked to average {n} checkpoints but {d} has {len(found)}"
            )
        return found[:n]
    return args.inputs


def main(argv=None) -> None:
    p = ArgumentParser(prog="nmt-sd-average-checkpoints", description=__doc__)
    p.add_argument(
        "--inputs", nargs="+", required=True, help="checkpoint files, or one directory"
    )
    p.add_argument("--output", required=True)
    p.add_argument(
        "--num-epoch-checkpoints",
        type=int,
        metavar="N",
        help="the last N checkpoint{epoch}.pt",
    )
    p.add_argument(
        "--num-update-checkpoints",
        type=int,
        metavar="N",
        help="the last N checkpoint_E_U.pt",
    )
    args = p.parse_args(argv)
    paths = select_inputs(args)
    logger.info(
        f"averaging {len(paths)} checkpoints: {', '.join(os.path.basename(x) for x in paths)}"
    )
    atomic_save(average_states(paths), args.output)
    logger.info(f"wrote {args.output}")


def cli_main(argv=None) -> None:
    run_cli("nmt-sd-average-checkpoints", main, argv)


if __name__ == "__main__":
    cli_main()
