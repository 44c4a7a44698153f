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
import concurrent.futures
import logging
import os
import shlex
import signal
import sys

from nmt_sd.ablation.grid import Grid, TestSet, grid_from_config, load_toml, parse_variant_arg, split_flags
from nmt_sd.ablation.report import write_report
from nmt_sd.ablation.runs import cells, evaluate, stop_children, train, training_summary
from nmt_sd.cli.common import run_cli
from nmt_sd.errors import NmtSdError
from nmt_sd.options import ArgumentParser

logger = logging.getLogger("nmt_sd.ablate")


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="nmt-sd-ablate", description=__doc__.split("\n")[0])
    p.add_argument("data", nargs="?", help="binarized data dir (overrides the config's data)")
    p.add_argument("--config", metavar="TOML", help="grid file (see recipes/ablations/)")
    p.add_argument("--base-flags", metavar="FLAGS", help="nmt-sd-train flags shared by every variant")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="a variant (repeatable; added to the config's)")
    p.add_argument("--baseline", metavar="NAME", help="variant the others are compared with (default: first)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="S")
    p.add_argument("--reference", metavar="FILE", help="raw reference of --gen-subset (adds a test set)")
    p.add_argument("--gen-subset", default="test", help="subset translated for --reference")
    p.add_argument("--checkpoint", help="best, last or avgN (default: best)")
    p.add_argument("--generate-flags", metavar="FLAGS", help="nmt-sd-generate flags (default: --beam 5 --lenpen 1.0)")
    p.add_argument("--save-root", required=True, metavar="DIR", help="runs go to DIR/VARIANT/seedS")
    p.add_argument("--report-dir", metavar="DIR", help="where report.md, CSVs and plots go (default: save root)")
    p.add_argument("--title", default="Ablation report")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="runs trained at once")
    p.add_argument("--bootstrap-samples", type=int, default=1000, metavar="N")
    p.add_argument("--report-only", action="store_true", help="no training: report the finished runs")
    p.add_argument("--dry-run", action="store_true", help="print the training commands and exit")
    return p


def build_grid(args) -> Grid:
    over = {"data": args.data, "baseline": args.baseline, "seeds": args.seeds, "checkpoint": args.checkpoint,
            "base": split_flags(args.base_flags, "--base-flags") if args.base_flags is not None else None,
            "generate": split_flags(args.generate_flags, "--generate-flags") if args.generate_flags is not None else None,
            "variants": [parse_variant_arg(v) for v in args.variant],
            "tests": [TestSet(args.gen_subset, args.reference, args.gen_subset)] if args.reference else []}
    cfg = load_toml(args.config) if args.config else {}
    return grid_from_config(cfg, args.config or "command line", over)


def run_cell(grid: Grid, cell, threads):
    train(grid, cell, threads)
    for test in grid.tests:
        evaluate(grid, cell, test, threads)
    logger.info(f"done: {cell.label}")


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    grid = build_grid(args)
    if not os.path.isdir(grid.data):
        raise NmtSdError(f"data directory {grid.data} does not exist")
    for test in grid.tests:
        if not os.path.isfile(test.reference):
            raise NmtSdError(f"test {test.name}: reference {test.reference} does not exist")
    if args.jobs < 1:
        raise NmtSdError("--jobs must be >= 1")
    todo = cells(grid, args.save_root)
    if args.dry_run:
        for c in todo:
            print(shlex.join(["nmt-sd-train", grid.data, *grid.train_flags(c.variant), "--seed", str(c.seed),
                              "--save-dir", c.dir]))
        return
    if not args.report_only:
        threads = max(1, len(os.sched_getaffinity(0)) // args.jobs) if args.jobs > 1 else None
        logger.info(f"{len(todo)} runs ({len(grid.variants)} variants x {len(grid.seeds)} seeds) under {args.save_root}")
        signal.signal(signal.SIGTERM, _interrupt)  # a killed grid stops its runs (they resume later)
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
                futures = [pool.submit(run_cell, grid, c, threads) for c in todo]
                try:
                    for fut in futures:
                        fut.result()  # the first failure stops the grid, naming its log
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
        finally:
            stop_children()
    results = collect(grid, todo)
    if not results:
        raise NmtSdError(f"no finished run under {args.save_root} to report")
    command = "nmt-sd-ablate " + shlex.join(sys.argv[1:] if argv is None else argv)
    path = write_report(grid, results, args.report_dir or args.save_root, args.bootstrap_samples, command, args.title)
    print(open(path).read())
    logger.info(f"report: {path}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def collect(grid: Grid, todo) -> dict:
    """variant -> seed -> {"train", "scores"} for every run evaluated on all test sets."""
    results = {}
    for c in todo:
        score_files = [os.path.join(c.dir, "eval", t.name, "score.json") for t in grid.tests]
        if not all(os.path.exists(f) for f in score_files):
            continue
        scores = {t.name: evaluate(grid, c, t) for t in grid.tests}  # cached: reads score.json
        results.setdefault(c.variant.name, {})[c.seed] = {"train": training_summary(c), "scores": scores}
    return results


def cli_main(argv=None) -> None:
    run_cli("nmt-sd-ablate", main, argv)


if __name__ == "__main__":
    cli_main()
