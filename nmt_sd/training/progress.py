"""Progress display (log lines fairseq users can read, an updating bar on a terminal,
ETA) and the machine-readable JSON-lines metrics log."""

import json
import logging
import os
import sys
import time
from typing import Dict, Optional

logger = logging.getLogger("nmt_sd.train")


def format_value(key: str, v) -> str:
    if isinstance(v, float):
        if key == "lr":
            return f"{v:.3e}"
        if key in ("wps", "wpb", "bsz", "tps"):
            return f"{v:.0f}" if v >= 100 else f"{v:.1f}"
        return f"{v:.3f}"
    return str(v)


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """One object per training run (master process only writes)."""

    def __init__(self, args, enabled: bool = True):
        self.enabled = enabled
        fmt = args.log_format or (
            "tqdm" if sys.stderr.isatty() and not args.no_progress_bar else "simple"
        )
        self.bar = fmt == "tqdm"
        self.fmt = fmt
        self.metrics_path = args.metrics_log or os.path.join(
            args.save_dir, "metrics.jsonl"
        )
        self.start = time.time()
        self._bar_open = False

    def _write_metrics(self, kind: str, stats: Dict) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.metrics_path)), exist_ok=True)
        row = {"type": kind, "time": round(time.time() - self.start, 3), **stats}
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def _line(self, prefix: str, stats: Dict) -> str:
        if self.fmt == "json":
            return json.dumps({"prefix": prefix, **stats})
        body = " | ".join(f"{k} {format_value(k, v)}" for k, v in stats.items())
        return f"{prefix} | {body}"

    def update(
        self, prefix: str, stats: Dict, step: int, total: int, eta: Optional[float]
    ) -> None:
        """A train_inner log point: a bar refresh on a terminal, else a log line."""
        if not self.enabled:
            return
        self._write_metrics("train_inner", stats)
        if self.fmt == "none":
            return
        pct = 100.0 * step / max(total, 1)
        eta_s = f" | eta {format_eta(eta)}" if eta is not None else ""
        if self.bar:
            keys = ("loss", "nll_loss", "ppl", "wps", "lr", "num_updates")
            short = ", ".join(
                f"{k}={format_value(k, stats[k])}" for k in keys if k in stats
            )
            sys.stderr.write(
                f"\r{prefix}: {pct:3.0f}% {step}/{total} [{short}{eta_s}]\033[K"
            )
            sys.stderr.flush()
            self._bar_open = True
        else:
            logger.info(
                self._line(f"{prefix}: {pct:3.0f}% {step}/{total}{eta_s}", stats)
            )

    def log(self, kind: str, prefix: str, stats: Dict) -> None:
        """Epoch summaries and validation results: always a log line."""
        if not self.enabled:
            return
        if self._bar_open:
            sys.stderr.write("\n")
            self._bar_open = False
        self._write_metrics(kind, stats)
        if self.fmt != "none":
            logger.info(self._line(prefix, stats))
