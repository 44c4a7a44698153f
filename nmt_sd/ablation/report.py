"""The ablation report: a Markdown table and a CSV per test set, a per-run CSV, and PNG
plots (validation loss curves of every variant, BLEU differences to the baseline)."""

import csv
import datetime
import math
import os
from typing import Dict, List

from nmt_sd.ablation.grid import Grid
from nmt_sd.ablation.stats import (
    bleu_metric,
    format_p,
    mean_sd,
    paired_bootstrap,
    paired_seeds,
    sentence_stats,
)
from nmt_sd.cli.common import read_lines


def seconds_per_update(runs: Dict[int, dict]) -> float:
    """Mean training seconds per update over the runs that logged it (nan if none)."""
    return mean_sd(
        [
            r["train"]["seconds_per_update"]
            for r in runs.values()
            if r["train"]["seconds_per_update"]
        ]
    )[0]


def variant_row(name: str, runs: Dict[int, dict], test: str, base_spu: float) -> dict:
    """A variant's row without its comparison with the baseline (delta, p, CI: nan)."""
    bleu = mean_sd([r["scores"][test]["bleu"] for r in runs.values()])
    chrf = mean_sd([r["scores"][test]["chrf"] for r in runs.values()])
    spu, train = seconds_per_update(runs), [r["train"] for r in runs.values()]
    ok = base_spu and spu and not math.isnan(base_spu)
    return {
        "variant": name,
        "seeds": len(runs),
        "bleu_mean": bleu[0],
        "bleu_sd": bleu[1],
        "chrf_mean": chrf[0],
        "chrf_sd": chrf[1],
        "train_minutes": mean_sd([t["train_seconds"] / 60 for t in train])[0],
        "updates": max(t["updates"] for t in train),
        "step_ratio": spu / base_spu if ok else math.nan,
        "params": next((t["params"] for t in train if t["params"]), None),
        **dict.fromkeys(("delta", "p", "ci_low", "ci_high"), math.nan),
        "signature": next(iter(runs.values()))["scores"][test]["bleu_signature"],
    }


def summarise(
    grid: Grid, results: Dict[str, Dict[int, dict]], n_samples: int
) -> Dict[str, List[dict]]:
    """Per test set, one row per variant (seeds that finished only).

    Args:
        results: variant -> seed -> {"train": training_summary, "scores": {test: score}}.
    """
    metric = bleu_metric()
    base = results.get(grid.baseline, {})
    base_spu = seconds_per_update(base)
    tables = {}
    for test in grid.tests:
        refs = read_lines(test.reference, f"test {test.name} reference")
        stats_cache = {}

        def stats(variant, seed):
            key = (variant, seed)
            if key not in stats_cache:
                hyp_file = results[variant][seed]["scores"][test.name]["hyp_file"]
                hyps = read_lines(hyp_file, "hypotheses")
                stats_cache[key] = sentence_stats(metric, hyps, refs)
            return stats_cache[key]

        rows = []
        for v in grid.variants:
            runs = results.get(v.name, {})
            if not runs:
                continue
            row = variant_row(v.name, runs, test.name, base_spu)
            seeds = paired_seeds(runs, base)
            if v.name != grid.baseline and seeds:
                ours = [stats(v.name, s) for s in seeds]
                theirs = [stats(grid.baseline, s) for s in seeds]
                res = paired_bootstrap(metric, ours, theirs, n_samples)
                row.update({k: res[k] for k in ("delta", "p", "ci_low", "ci_high")})
            elif v.name == grid.baseline:
                row.update(delta=0.0)
            rows.append(row)
        tables[test.name] = rows
    return tables


def _f(x, fmt="{:.2f}"):
    return (
        "" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)
    )


def markdown_table(rows: List[dict], baseline: str) -> str:
    head = (
        "| variant | seeds | BLEU | chrF2 | ΔBLEU | p | train min | step ratio | params |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        name = (
            f"**{r['variant']}** (baseline)"
            if r["variant"] == baseline
            else r["variant"]
        )
        delta = "" if r["variant"] == baseline else _f(r["delta"], "{:+.2f}")
        lines.append(
            f"| {name} | {r['seeds']} | {_f(r['bleu_mean'])} ± {_f(r['bleu_sd'])} | "
            f"{_f(r['chrf_mean'])} ± {_f(r['chrf_sd'])} | {delta} | {format_p(r['p'])} | "
            f"{_f(r['train_minutes'], '{:.1f}')} | {_f(r['step_ratio'])} | "
            f"{_f(r['params'] / 1e6 if r['params'] else None, '{:.2f}M')} |"
        )
    return head + "\n".join(lines) + "\n"


CSV_FIELDS = [
    "variant",
    "seeds",
    "bleu_mean",
    "bleu_sd",
    "chrf_mean",
    "chrf_sd",
    "delta",
    "p",
    "ci_low",
    "ci_high",
    "train_minutes",
    "updates",
    "step_ratio",
    "params",
    "signature",
]


def write_csv(path: str, rows: List[dict], fields: List[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def cell_rows(grid: Grid, results: Dict[str, Dict[int, dict]]) -> List[dict]:
    rows = []
    for v in grid.variants:
        for seed, r in sorted(results.get(v.name, {}).items()):
            for test in grid.tests:
                s = r["scores"][test.name]
                rows.append(
                    {
                        "variant": v.name,
                        "seed": seed,
                        "test": test.name,
                        "bleu": s["bleu"],
                        "chrf": s["chrf"],
                        "updates": r["train"]["updates"],
                        "train_seconds": r["train"]["train_seconds"],
                        "seconds_per_update": r["train"]["seconds_per_update"],
                        "params": r["train"]["params"],
                    }
                )
    return rows


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_curves(grid: Grid, results, path: str) -> bool:
    """Validation loss against updates: one line per variant (mean over seeds), the
    seeds' range shaded. Returns False when no run logged a validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for v in grid.variants:
        curves = [
            r["train"]["valid_curve"]
            for r in results.get(v.name, {}).values()
            if r["train"]["valid_curve"]
        ]
        if not curves:
            continue
        steps = sorted(set.intersection(*[{u for u, _, _ in c} for c in curves]))
        if not steps:
            continue
        vals = [[dict((u, l) for u, l, _ in c)[s] for c in curves] for s in steps]
        ax.plot(
            steps,
            [sum(x) / len(x) for x in vals],
            label=v.name,
            lw=2 if v.name == grid.baseline else 1.4,
        )
        if len(curves) > 1:
            ax.fill_between(
                steps, [min(x) for x in vals], [max(x) for x in vals], alpha=0.15
            )
        drawn = True
    if drawn:
        ax.set_xlabel("updates")
        ax.set_ylabel("validation loss (label-smoothed CE)")
        ax.set_title("Validation loss (mean over seeds, range shaded)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def plot_deltas(grid: Grid, tables: Dict[str, List[dict]], path: str) -> bool:
    """Bars of ΔBLEU vs the baseline per variant and test set, with the paired
    bootstrap's 95% interval as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v.name for v in grid.variants if v.name != grid.baseline]
    tests = list(tables)
    if not names:
        return False
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names) * len(tests)), 4))
    width = 0.8 / len(tests)
    for j, t in enumerate(tests):
        by = {r["variant"]: r for r in tables[t]}
        xs, ys, err = [], [], [[], []]
        for i, n in enumerate(names):
            r = by.get(n)
            if r is None or math.isnan(r["delta"]):
                continue
            xs.append(i + (j - (len(tests) - 1) / 2) * width)
            ys.append(r["delta"])
            err[0].append(max(r["delta"] - r["ci_low"], 0.0))
            err[1].append(max(r["ci_high"] - r["delta"], 0.0))
        ax.bar(xs, ys, width=width, yerr=err, capsize=3, label=t)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel(f"ΔBLEU vs {grid.baseline}")
    ax.set_title("BLEU difference to the baseline (95% paired bootstrap interval)")
    if len(tests) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


RUN_FIELDS = (
    "variant seed test bleu chrf updates train_seconds seconds_per_update params"
)


def report_header(grid: Grid, results, command: str, title: str) -> List[str]:
    """The report's title, command, settings, variants and training cost."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [
        f"# {title}\n",
        f"Made {date} with:\n",
        f"    {command}\n",
        f"Data `{grid.data}`; base flags `{' '.join(grid.base)}`; seeds {grid.seeds}; "
        f"checkpoint `{grid.checkpoint}`; generation `{' '.join(grid.generate)}`.\n",
        "Variants:\n",
    ]
    for v in grid.variants:
        extra = " ".join(v.flags) or "(base flags only)"
        removed = f"; removes `{' '.join(v.remove)}`" if v.remove else ""
        md.append(f"- `{v.name}`: `{extra}`{removed}")
    runs = [r["train"] for by_seed in results.values() for r in by_seed.values()]
    hours = sum(t["train_seconds"] for t in runs) / 3600
    md.append(
        f"\nTraining: {hours:.2f} core-hours over {len(runs)} runs (the sum of the runs' "
        "own training times; wall time also depends on `--jobs` and test decoding).\n"
    )
    return md


def write_report(
    grid: Grid, results, out_dir: str, n_samples: int, command: str, title: str
) -> str:
    """Writes report.md, results_TEST.csv, runs.csv and the plots; returns report.md's path."""
    os.makedirs(out_dir, exist_ok=True)
    tables = summarise(grid, results, n_samples)
    runs_csv = os.path.join(out_dir, "runs.csv")
    write_csv(runs_csv, cell_rows(grid, results), RUN_FIELDS.split())
    md = report_header(grid, results, command, title)
    for test in grid.tests:
        rows = tables[test.name]
        write_csv(os.path.join(out_dir, f"results_{test.name}.csv"), rows, CSV_FIELDS)
        md += [
            f"## {test.name} (`{test.subset}`, reference `{test.reference}`)\n",
            markdown_table(rows, grid.baseline),
        ]
        sig = rows[0]["signature"] if rows else ""
        md.append(
            f"BLEU ± sample sd over seeds. p: paired bootstrap resampling vs `{grid.baseline}` "
            f"({n_samples} resamples of the test sentences, each system scored as the mean over its "
            f"seeds' corpus BLEU, seeds paired). Step ratio: mean seconds per update / the baseline's, "
            f"from the runs' own logs. sacreBLEU signature: `{sig}`\n"
        )
    if len(grid.tests) > 1:
        md += ["## All test sets (mean BLEU)\n", multi_table(grid, tables)]
    if not has_matplotlib():
        md.append(
            "Plots skipped: matplotlib is not installed (`pip install matplotlib`, or the package's "
            "`[plots]` extra, then rerun with `--report-only`).\n"
        )
        print("nmt-sd-ablate: plots skipped: matplotlib is not installed")
    else:
        if plot_curves(grid, results, os.path.join(out_dir, "valid_loss.png")):
            md.append("![validation loss](valid_loss.png)\n")
        if plot_deltas(grid, tables, os.path.join(out_dir, "bleu_delta.png")):
            md.append("![BLEU differences](bleu_delta.png)\n")
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    return path


def multi_table(grid: Grid, tables: Dict[str, List[dict]]) -> str:
    tests = list(tables)
    head = (
        "| variant | "
        + " | ".join(tests)
        + " | average |\n|---|"
        + "---:|" * (len(tests) + 1)
        + "\n"
    )
    lines = []
    for v in grid.variants:
        vals = [
            next(
                (r["bleu_mean"] for r in tables[t] if r["variant"] == v.name), math.nan
            )
            for t in tests
        ]
        avg = (
            sum(vals) / len(vals) if not any(math.isnan(x) for x in vals) else math.nan
        )
        lines.append(
            f"| {v.name} | " + " | ".join(_f(x) for x in vals) + f" | {_f(avg)} |"
        )
    return head + "\n".join(lines) + "\n"
