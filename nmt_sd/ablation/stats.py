"""Statistics for ablation reports: mean and sample sd over seeds, and a paired bootstrap
test of corpus BLEU that pools seeds.

Paired bootstrap resampling (Koehn 2004), as sacreBLEU's ``--paired-bs`` computes it:
resample test sentences with replacement n times; in each resample score both systems
from their summed sufficient statistics; the p-value of the observed difference d is
(#{|d_i| - mean|d| >= |d|} + 1) / (n + 1). (sacreBLEU 2.x counts ``>``, which gives two
identical systems p = 1/(n+1); ``>=`` gives them p = 1, as a test of "no difference"
should.) With several seeds a system's score in a
resample is the mean over seeds of each seed's corpus BLEU on the same sentences, so the
resampling unit is the test sentence and seed variance stays in the statistic.
"""

import math
from typing import Dict, List, Optional, Sequence

import numpy as np


def mean_sd(values: Sequence[float]) -> tuple:
    """Mean and sample standard deviation (n - 1); sd is 0.0 for a single value."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def bleu_metric():
    from sacrebleu.metrics import BLEU

    return BLEU()  # 13a, mixed case, exp smoothing: the signature nmt-sd reports


def sentence_stats(metric, hyps: List[str], refs: List[str]) -> np.ndarray:
    """(N, S) per-sentence sufficient statistics of sacreBLEU's metric."""
    return np.array(metric._extract_corpus_statistics(hyps, [refs]), dtype=np.float64)


def corpus_scores(metric, stats: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Corpus scores of each resample: stats (N, S), idx (R, N) -> (R,)."""
    summed = stats[idx].sum(axis=1)  # (R, S)
    return np.array(
        [metric._compute_score_from_stats(list(row)).score for row in summed]
    )


def paired_bootstrap(
    metric,
    system: List[np.ndarray],
    baseline: List[np.ndarray],
    n_samples: int = 1000,
    seed: int = 12345,
) -> Dict[str, float]:
    """Paired bootstrap of mean-over-seeds corpus BLEU, system vs baseline.

    Args:
        system, baseline: per-seed (N, S) sentence statistics, paired by position
            (seed i of the system with seed i of the baseline), same N.
    Returns:
        {"delta": observed mean difference, "p": p-value, "ci_low", "ci_high": 95%
        bootstrap interval of the difference, "n_samples": n}.
    """
    n = baseline[0].shape[0]
    if any(s.shape[0] != n for s in list(system) + list(baseline)):
        raise ValueError("all systems must be scored on the same sentences")
    rng = np.random.default_rng(seed)
    idx = rng.choice(n, size=(n_samples, n), replace=True)  # (R, N)
    full = np.arange(n)[None, :]
    real_sys = np.mean([corpus_scores(metric, s, full)[0] for s in system])
    real_bl = np.mean([corpus_scores(metric, b, full)[0] for b in baseline])
    sys_r = np.mean([corpus_scores(metric, s, idx) for s in system], axis=0)  # (R,)
    bl_r = np.mean([corpus_scores(metric, b, idx) for b in baseline], axis=0)
    diffs = sys_r - bl_r
    centred = np.abs(diffs) - np.abs(diffs).mean()
    real = real_sys - real_bl
    p = min(1.0, (np.sum(centred >= abs(real) - 1e-9) + 1) / (n_samples + 1))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {
        "delta": float(real),
        "p": float(p),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "n_samples": n_samples,
    }


def paired_seeds(system: Dict[int, object], baseline: Dict[int, object]) -> List[int]:
    """Seeds both sides have, in order (the test pairs seed with seed)."""
    return sorted(set(system) & set(baseline))


def format_p(p: Optional[float]) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"
