"""Running one cell of an ablation grid: train, pick the checkpoint, translate, score.

Layout under the grid's root: ``ROOT/VARIANT/seedS/`` is an ordinary nmt-sd save dir
(checkpoints, train.log, metrics.jsonl) plus ``eval/TEST/`` (generate output and
``score.json``). Every stage leaves a marker, so a rerun skips what is done and an
interrupted training run resumes from its checkpoint_last.pt.
"""

import concurrent.futures
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

from nmt_sd.ablation.grid import Grid, TestSet, Variant
from nmt_sd.cli.common import read_lines
from nmt_sd.errors import NmtSdError

logger = logging.getLogger("nmt_sd.ablate")

TRAIN_DONE = "train.done"
LIVE: set = set()  # running child processes, terminated if the grid is stopped


def stop_children() -> None:
    for proc in list(LIVE):
        proc.terminate()
    for proc in list(LIVE):
        proc.wait()


@dataclass
class Cell:
    variant: Variant
    seed: int
    dir: str

    @property
    def label(self) -> str:
        return f"{self.variant.name}/seed{self.seed}"


def cells(grid: Grid, root: str) -> List[Cell]:
    return [
        Cell(v, s, os.path.join(root, v.name, f"seed{s}"))
        for v in grid.variants
        for s in grid.seeds
    ]


def _run(
    cmd: List[str], log_path: str, what: str, env: Optional[Dict[str, str]] = None
) -> None:
    """Run a child process with output appended to ``log_path``; a failure names the log."""
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        LIVE.add(proc)
        try:
            code = proc.wait()
        finally:
            LIVE.discard(proc)
    if code != 0:
        tail = "".join(open(log_path).readlines()[-3:]).strip().replace("\n", " | ")
        raise NmtSdError(f"{what} failed (exit {code}); see {log_path}: {tail[-300:]}")


def train(grid: Grid, cell: Cell, threads: Optional[int] = None) -> None:
    """Train (or resume) the cell unless its marker says it finished."""
    if os.path.exists(os.path.join(cell.dir, TRAIN_DONE)):
        return
    os.makedirs(cell.dir, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "nmt_sd.cli.train",
        grid.data,
        *grid.train_flags(cell.variant),
        "--seed",
        str(cell.seed),
        "--save-dir",
        cell.dir,
    ]
    if threads:
        cmd += ["--num-threads", str(threads)]
    _run(cmd, os.path.join(cell.dir, "train.log"), f"training {cell.label}")
    open(os.path.join(cell.dir, TRAIN_DONE), "w").close()


def checkpoint_path(grid: Grid, cell: Cell) -> str:
    """The checkpoint to evaluate (averaging epoch checkpoints first for avgN)."""
    if grid.checkpoint in ("best", "last"):
        return os.path.join(cell.dir, f"checkpoint_{grid.checkpoint}.pt")
    n = int(grid.checkpoint[3:])
    out = os.path.join(cell.dir, f"checkpoint_avg{n}.pt")
    if not os.path.exists(out):
        _run(
            [
                sys.executable,
                "-m",
                "nmt_sd.cli.average_checkpoints",
                "--inputs",
                cell.dir,
                "--num-epoch-checkpoints",
                str(n),
                "--output",
                out,
            ],
            os.path.join(cell.dir, "eval.log"),
            f"averaging {cell.label}",
        )
    return out


def evaluate(
    grid: Grid, cell: Cell, test: TestSet, threads: Optional[int] = None
) -> dict:
    """Translate ``test`` with the cell's checkpoint and score it (cached in score.json)."""
    out_dir = os.path.join(cell.dir, "eval", test.name)
    score_file = os.path.join(out_dir, "score.json")
    if os.path.exists(score_file):
        with open(score_file) as f:
            return json.load(f)
    os.makedirs(out_dir, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "nmt_sd.cli.generate",
        grid.data,
        "--path",
        checkpoint_path(grid, cell),
        "--gen-subset",
        test.subset,
        "--results-path",
        out_dir,
        "--quiet",
        *grid.generate,
        *test.flags,
    ]
    if threads:
        cmd += ["--num-threads", str(threads)]
    _run(
        cmd,
        os.path.join(cell.dir, "eval.log"),
        f"translating {test.name} with {cell.label}",
    )
    hyp_file = os.path.join(out_dir, f"{test.subset}.hyp.detok")
    hyps, refs = (
        read_lines(hyp_file, "hypotheses"),
        read_lines(test.reference, f"test {test.name} reference"),
    )
    if len(hyps) != len(refs):
        raise NmtSdError(
            f"{hyp_file} has {len(hyps)} lines but the reference {test.reference} has {len(refs)}"
        )
    from nmt_sd.generation.scoring import score_corpus

    result = score_corpus(hyps, refs)
    score = {
        "bleu": result["bleu"],
        "chrf": result["chrf"],
        "bleu_signature": result["bleu_signature"],
        "chrf_signature": result["chrf_signature"],
        "hyp_file": hyp_file,
        "reference": test.reference,
    }
    tmp = score_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(score, f, indent=1)
    os.replace(tmp, score_file)
    return score


def training_summary(cell: Cell) -> dict:
    """Updates, training seconds and per-update seconds from metrics.jsonl; the
    validation curve; the model's parameter count from checkpoint_last.pt."""
    path = os.path.join(cell.dir, "metrics.jsonl")
    updates, seconds, curve = 0, 0.0, []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by an interruption
                updates = max(updates, int(rec.get("num_updates", 0)))
                seconds = max(seconds, float(rec.get("time", 0.0)))
                if rec.get("type") == "valid" and "loss" in rec:
                    curve.append(
                        (
                            int(rec.get("num_updates", 0)),
                            float(rec["loss"]),
                            rec.get("bleu"),
                        )
                    )
    return {
        "updates": updates,
        "train_seconds": seconds,
        "seconds_per_update": seconds / updates if updates else None,
        "valid_curve": sorted(set(curve), key=lambda x: x[0]) if curve else [],
        "params": count_params(cell),
    }


def count_params(cell: Cell) -> Optional[int]:
    path = os.path.join(cell.dir, "checkpoint_last.pt")
    if not os.path.exists(path):
        return None
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    # tied weights (shared embeddings) are saved once and load as one storage
    tensors = {
        (t.data_ptr(), tuple(t.shape)): t
        for t in state.get("model", {}).values()
        if torch.is_tensor(t)
    }
    return sum(t.numel() for t in tensors.values())


def run_cell(grid: Grid, cell, threads) -> None:
    train(grid, cell, threads)
    for test in grid.tests:
        evaluate(grid, cell, test, threads)
    logger.info(f"done: {cell.label}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_grid(grid: Grid, todo, jobs: int, threads) -> None:
    """Train and evaluate every cell of ``todo``, ``jobs`` at once; the first failure
    stops the grid (naming its log), and so does SIGTERM: the runs resume later."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(run_cell, grid, c, threads) for c in todo]
            try:
                for fut in futures:
                    fut.result()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    finally:
        stop_children()


def collect(grid: Grid, todo) -> dict:
    """variant -> seed -> {"train", "scores"} for every run evaluated on all test sets."""
    results = {}
    for c in todo:
        files = [os.path.join(c.dir, "eval", t.name, "score.json") for t in grid.tests]
        if not all(os.path.exists(f) for f in files):
            continue
        scores = {t.name: evaluate(grid, c, t) for t in grid.tests}  # reads score.json
        summary = {"train": training_summary(c), "scores": scores}
        results.setdefault(c.variant.name, {})[c.seed] = summary
    return results
