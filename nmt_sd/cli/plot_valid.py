"""python -m nmt_sd.cli.plot_valid SAVE_DIR [--output PNG]: per-language-pair validation
loss over epochs (from ``SAVE_DIR/metrics.jsonl``), with LSSD's teacher updates marked.

Convergence inconsistency is what LSSD is about: each pair's curve shows where it stops
improving. A filled marker is an epoch where the pair's language got a new teacher
(``lssd_updated`` in the valid rows of an LSSD run); for other runs the markers show
each pair's new best loss, i.e. where LSSD would have updated that pair's teacher.
Several runs can be overlaid (one line style per run).
"""

import argparse
import json
import os
from typing import Dict, List

from nmt_sd.cli.common import run_cli
from nmt_sd.errors import NmtSdError

STYLES = ["-", "--", ":", "-."]


def end_of_epoch_rows(path: str) -> List[Dict]:
    """The last valid row of each epoch (mid-epoch validations are dropped)."""
    if not os.path.isfile(path):
        raise NmtSdError(f"metrics log not found: {path}")
    rows: Dict[int, Dict] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except ValueError:
                raise NmtSdError(f"{path}:{lineno}: not a JSON line")
            if row.get("type") == "valid" and "epoch" in row:
                rows[int(row["epoch"])] = row
    if not rows:
        raise NmtSdError(f"{path}: no validation rows (train with validation enabled)")
    return [rows[e] for e in sorted(rows)]


def pair_curves(rows: List[Dict]) -> Dict[str, List]:
    """{pair: [(epoch, loss, teacher_update)]}; a bilingual run gives one curve 'valid'."""
    pairs = sorted(
        {
            k[: -len("_loss")]
            for r in rows
            for k in r
            if k.endswith("_loss") and "-" in k and not k.endswith("_nll_loss")
        }
    )
    curves = {}
    for pair in pairs or ["valid"]:
        key = f"{pair}_loss" if pairs else "loss"
        src, _, tgt = pair.partition("-")
        best, pts = None, []
        for r in rows:
            if key not in r:
                continue
            if "lssd_updated" in r:
                updated = set(str(r["lssd_updated"]).split(","))
                marked = bool(updated & {src, tgt})
            else:
                marked = best is None or r[key] < best
            best = r[key] if best is None else min(best, r[key])
            pts.append((int(r["epoch"]), float(r[key]), marked))
        curves[pair] = pts
    return curves


def plot(runs: Dict[str, List[Dict]], output: str, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise NmtSdError(
            "plotting needs matplotlib: pip install matplotlib (or nmt-sd[plots])"
        ) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {}
    for i, (name, rows) in enumerate(runs.items()):
        for pair, pts in pair_curves(rows).items():
            color = colors.setdefault(pair, f"C{len(colors) % 10}")
            label = pair if len(runs) == 1 else f"{pair} ({name})"
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                STYLES[i % len(STYLES)],
                color=color,
                label=label,
            )
            ax.plot(
                [p[0] for p in pts if p[2]],
                [p[1] for p in pts if p[2]],
                "o",
                color=color,
                markersize=5,
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (label-smoothed, base 2)")
    ax.set_title(
        title + "\n(markers: teacher update / new per-language best)", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="plot_valid", description=__doc__.split("\n")[0])
    p.add_argument(
        "runs", nargs="+", help="SAVE_DIR (or metrics.jsonl) of one or more runs"
    )
    p.add_argument("--output", help="PNG path (default: FIRST_RUN/valid_loss.png)")
    p.add_argument("--title", default="per-pair validation loss")
    args = p.parse_args(argv)
    runs = {}
    for run in args.runs:
        path = os.path.join(run, "metrics.jsonl") if os.path.isdir(run) else run
        runs[os.path.basename(os.path.dirname(os.path.abspath(path)))] = (
            end_of_epoch_rows(path)
        )
    first = (
        args.runs[0] if os.path.isdir(args.runs[0]) else os.path.dirname(args.runs[0])
    )
    output = args.output or os.path.join(first, "valid_loss.png")
    plot(runs, output, args.title)
    print(f"wrote {output}")


def cli_main(argv=None) -> None:
    run_cli("plot_valid", main, argv)


if __name__ == "__main__":
    cli_main()
