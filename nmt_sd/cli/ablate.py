"""nmt-sd-ablate: train and evaluate every variant x seed of an ablation grid, then
write a report (Markdown + CSV tables, paired bootstrap p-values, plots).

    nmt-sd-ablate --config recipes/ablations/consistency.toml --save-root checkpoints/abl
    nmt-sd-ablate data/bin --base-flags "--arch transformer_cpu --max-update 1000" \\
        --variant baseline= --variant rdrop="--criterion rdrop --rdrop-alpha 5" \\
        --seeds 1 2 3 --reference data/raw/test.en --save-root checkpoints/abl

Runs are sequential by default (``--jobs N`` runs N at once, each with cores/N threads).
A rerun skips finished runs and resumes interrupted ones from their last checkpoint.
"""

import argparse
import logging
import os
import shlex
import sys

from nmt_sd.ablation.grid import (
    Grid,
    TestSet,
    grid_from_config,
    load_toml,
    parse_variant_arg,
    split_flags,
)
from nmt_sd.ablation.report import write_report
from nmt_sd.ablation.runs import cells, collect, run_grid
from nmt_sd.cli.common import run_cli
from nmt_sd.errors import NmtSdError
from nmt_sd.options import ArgumentParser

logger = logging.getLogger("nmt_sd.ablate")


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="nmt-sd-ablate", description=__doc__.split("\n")[0])
    add = p.add_argument
    add("data", nargs="?", help="binarized data dir (overrides the config's data)")
    add("--config", metavar="TOML", help="grid file (see recipes/ablations/)")
    add("--base-flags", metavar="FLAGS", help="nmt-sd-train flags of every variant")
    add(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="a variant (repeatable; added to the config's)",
    )
    add("--baseline", metavar="NAME", help="variant compared with (default: first)")
    add("--seeds", type=int, nargs="+", metavar="S")
    add(
        "--reference", metavar="FILE", help="raw reference of --gen-subset (a test set)"
    )
    add("--gen-subset", default="test", help="subset translated for --reference")
    add("--checkpoint", help="best, last or avgN (default: best)")
    add(
        "--generate-flags",
        metavar="FLAGS",
        help="nmt-sd-generate flags (default: --beam 5 --lenpen 1.0)",
    )
    add("--save-root", required=True, metavar="DIR", help="runs: DIR/VARIANT/seedS")
    add(
        "--report-dir",
        metavar="DIR",
        help="where report.md, CSVs and plots go (default: save root)",
    )
    add("--title", default="Ablation report")
    add("--jobs", type=int, default=1, metavar="N", help="runs trained at once")
    add("--bootstrap-samples", type=int, default=1000, metavar="N")
    add("--report-only", action="store_true", help="report the finished runs only")
    add("--dry-run", action="store_true", help="print the training commands, exit")
    return p


def flags_or_none(value, flag: str):
    """None (the config decides) when the flag is not given."""
    return None if value is None else split_flags(value, flag)


def build_grid(args) -> Grid:
    over = {
        "data": args.data,
        "baseline": args.baseline,
        "seeds": args.seeds,
        "checkpoint": args.checkpoint,
        "base": flags_or_none(args.base_flags, "--base-flags"),
        "generate": flags_or_none(args.generate_flags, "--generate-flags"),
        "variants": [parse_variant_arg(v) for v in args.variant],
        "tests": (
            [TestSet(args.gen_subset, args.reference, args.gen_subset)]
            if args.reference
            else []
        ),
    }
    cfg = load_toml(args.config) if args.config else {}
    return grid_from_config(cfg, args.config or "command line", over)


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    grid = build_grid(args)
    if not os.path.isdir(grid.data):
        raise NmtSdError(f"data directory {grid.data} does not exist")
    for test in grid.tests:
        if not os.path.isfile(test.reference):
            raise NmtSdError(
                f"test {test.name}: reference {test.reference} does not exist"
            )
    if args.jobs < 1:
        raise NmtSdError("--jobs must be >= 1")
    todo = cells(grid, args.save_root)
    if args.dry_run:
        for c in todo:
            flags = [*grid.train_flags(c.variant), "--seed", str(c.seed)]
            flags += ["--save-dir", c.dir]
            print(shlex.join(["nmt-sd-train", grid.data, *flags]))
        return
    if not args.report_only:
        cores = len(os.sched_getaffinity(0))
        threads = max(1, cores // args.jobs) if args.jobs > 1 else None
        shape = f"{len(grid.variants)} variants x {len(grid.seeds)} seeds"
        logger.info(f"{len(todo)} runs ({shape}) under {args.save_root}")
        run_grid(grid, todo, args.jobs, threads)
    results = collect(grid, todo)
    if not results:
        raise NmtSdError(f"no finished run under {args.save_root} to report")
    command = "nmt-sd-ablate " + shlex.join(sys.argv[1:] if argv is None else argv)
    out_dir, samples = args.report_dir or args.save_root, args.bootstrap_samples
    path = write_report(grid, results, out_dir, samples, command, args.title)
    print(open(path).read())
    logger.info(f"report: {path}")


def cli_main(argv=None) -> None:
    run_cli("nmt-sd-ablate", main, argv)


if __name__ == "__main__":
    cli_main()
