"""Multilingual data: language tags, one dataset over several language pairs, and an
epoch iterator whose batches each hold ONE pair, the pairs drawn by temperature sampling.

Sampling (fairseq's ``--sampling-method temperature``): pair i is drawn with probability
p_i ∝ n_i^(1/T). Here n_i counts pair i's *batches* (not sentences), so T = 1 visits
every batch exactly once per epoch, like plain concatenation, and larger T flattens the
distribution towards uniform (T -> inf). An epoch keeps the total number of batches
(sum_i n_i) and splits it by p_i; a pair drawn more often than it has batches cycles
through fresh permutations of them, a pair drawn less often sees a different subset
each epoch. Everything is a pure function of (seed, epoch), so a run resumed at
(epoch, iterations_in_epoch) sees exactly the same batches.
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np

from nmt_sd.data.batching import EpochBatchIterator
from nmt_sd.errors import NmtSdError


def langtok(lang: str) -> str:
    """The dictionary symbol of a language tag: ``__de__``."""
    return f"__{lang}__"


def sampling_probs(sizes: Sequence[int], temperature: float) -> np.ndarray:
    """p_i ∝ n_i^(1/T) (T = inf: uniform over the pairs with data)."""
    n = np.asarray(sizes, dtype=np.float64)
    if temperature == float("inf"):
        w = (n > 0).astype(np.float64)
    else:
        w = np.where(n > 0, (n / max(n.sum(), 1.0)) ** (1.0 / temperature), 0.0)
    return w / max(w.sum(), 1e-12)


def draws_per_pair(sizes: Sequence[int], temperature: float) -> List[int]:
    """Batches of each pair in one epoch: sum(sizes) split by ``sampling_probs`` with
    the largest-remainder rule (exactly ``sizes`` when T = 1)."""
    total = int(sum(sizes))
    quota = sampling_probs(sizes, temperature) * total
    counts = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - counts), kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    return counts.tolist()


class MultiPairDataset:
    """Several ``LanguagePairDataset``s under one global index (pair p's examples sit at
    ``offsets[p] .. offsets[p+1]-1``). Items keep the global index as ``id``; a batch
    must come from one pair (the collater refuses a mix)."""

    def __init__(self, datasets: Sequence, names: Sequence[str]):
        self.datasets, self.names = list(datasets), list(names)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self.src_sizes = np.concatenate([d.src_sizes for d in self.datasets])
        has_tgt = all(d.tgt_sizes is not None for d in self.datasets)
        self.tgt_sizes = (
            np.concatenate([d.tgt_sizes for d in self.datasets]) if has_tgt else None
        )
        # "has a target side" for callers
        self.tgt = self.datasets[0].tgt if has_tgt else None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> Tuple[int, int]:
        """(pair index, index within the pair) of global index ``i``."""
        p = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return p, int(i - self.offsets[p])

    def pair_name(self, i: int) -> str:
        return self.names[self.locate(i)[0]]

    def __getitem__(self, i: int) -> Dict:
        p, j = self.locate(i)
        item = self.datasets[p][j]
        item.update(id=int(i), pair=p)
        return item

    def num_tokens(self, i: int) -> int:
        if self.tgt_sizes is None:
            return int(self.src_sizes[i])
        return int(max(self.src_sizes[i], self.tgt_sizes[i]))

    def pair_indices(self, p: int) -> np.ndarray:
        """Pair p's global indices, sorted by target then source length."""
        return self.datasets[p].ordered_indices() + self.offsets[p]

    def collater(self, items: List[Dict]) -> Dict:
        pairs = {it["pair"] for it in items}
        if len(pairs) > 1:
            names = ", ".join(self.names[p] for p in sorted(pairs))
            raise NmtSdError(
                f"a batch mixes language pairs ({names}); multilingual batches hold one pair each"
            )
        return self.datasets[items[0]["pair"]].collater(items) if items else {}


class MultiPairBatchIterator(EpochBatchIterator):
    """Resumable epochs of one-pair batches. Training (``shuffle``): the pairs' batches
    drawn by temperature sampling and interleaved at random; validation: every batch
    of every pair, pair by pair, in a fixed order.

    Args:
        batches_per_pair: for each pair, its batches (arrays of global indices).
        temperature: the sampling temperature T (``inf`` = uniform over pairs).
    """

    def __init__(
        self,
        dataset: MultiPairDataset,
        batches_per_pair: List[List[np.ndarray]],
        temperature: float = 1.0,
        seed: int = 1,
        shuffle: bool = True,
        num_shards: int = 1,
        shard_id: int = 0,
        epoch: int = 1,
    ):
        flat = [b for batches in batches_per_pair for b in batches]
        super().__init__(dataset, flat, seed, shuffle, num_shards, shard_id, epoch)
        self.batches_per_pair = batches_per_pair
        self.temperature = temperature

    def pair_stream(self, epoch: int, p: int, count: int) -> List[np.ndarray]:
        """The first ``count`` batches of pair p's epoch stream (fresh permutations)."""
        batches, out, k = self.batches_per_pair[p], [], 0
        while len(out) < count:
            perm = np.random.RandomState(
                [self.seed % 2**32, epoch, p, k]
            ).permutation(len(batches))
            out += [batches[i] for i in perm[: count - len(out)]]
            k += 1
        return out

    def _epoch_batches(self, epoch: int) -> List[np.ndarray]:
        if not self.shuffle:
            batches = list(self.batches)
        else:
            sizes = [len(b) for b in self.batches_per_pair]
            drawn = [
                b
                for p, c in enumerate(draws_per_pair(sizes, self.temperature))
                for b in self.pair_stream(epoch, p, c)
            ]
            order = np.random.RandomState([self.seed % 2**32, epoch]).permutation(
                len(drawn)
            )
            batches = [drawn[i] for i in order]
        if self.num_shards > 1 and batches:
            rem = (-len(batches)) % self.num_shards
            batches = (batches + batches[:rem])[self.shard_id :: self.num_shards]
        return batches
