"""Token-budget batching and a resumable, deterministic epoch iterator (pure NumPy)."""

from typing import Callable, Dict, Iterator, List, Optional

import numpy as np


def batch_by_size(
    indices: np.ndarray,
    num_tokens: Callable[[int], int],
    max_tokens: Optional[int] = None,
    max_sentences: Optional[int] = None,
    required_batch_size_multiple: int = 1,
) -> List[np.ndarray]:
    """Group length-sorted ``indices`` into batches whose padded size
    ``len(batch) * max(num_tokens)`` stays within ``max_tokens`` (fairseq's rule).

    A single example longer than ``max_tokens`` raises ValueError (callers filter first).
    """
    max_tokens = max_tokens or float("inf")
    max_sentences = max_sentences or float("inf")
    mult = required_batch_size_multiple
    batches, cur, cur_max = [], [], 0
    for idx in indices:
        n = num_tokens(int(idx))
        if n > max_tokens:
            raise ValueError(f"example {idx} has {n} tokens > max_tokens={max_tokens}")
        new_max = max(cur_max, n)
        if cur and (
            (len(cur) + 1) * new_max > max_tokens or len(cur) + 1 > max_sentences
        ):
            # keep a multiple of `mult` when possible; carry the remainder over
            keep = len(cur) if len(cur) < mult else len(cur) - len(cur) % mult
            batches.append(np.asarray(cur[:keep]))
            cur = cur[keep:]
            cur_max = max((num_tokens(int(i)) for i in cur), default=0)
            new_max = max(cur_max, n)
        cur.append(int(idx))
        cur_max = new_max
    if cur:
        batches.append(np.asarray(cur))
    return batches


class EpochBatchIterator:
    """Yields collated batches for an epoch; the order is a pure function of (seed, epoch),
    so a run restarted at (epoch, iterations_in_epoch) sees exactly the same batches.

    With ``num_shards > 1`` (DDP), every shard gets the same number of batches: the
    batch list is filled up to a multiple of ``num_shards`` by repeating its first batches.
    """

    def __init__(
        self,
        dataset,
        batches: List[np.ndarray],
        seed: int = 1,
        shuffle: bool = True,
        num_shards: int = 1,
        shard_id: int = 0,
        epoch: int = 1,
    ):
        self.dataset = dataset
        self.batches = batches
        self.seed, self.shuffle = seed, shuffle
        self.num_shards, self.shard_id = num_shards, shard_id
        self.epoch = epoch
        self.iterations_in_epoch = 0

    def _epoch_batches(self, epoch: int) -> List[np.ndarray]:
        order = np.arange(len(self.batches))
        if self.shuffle:
            order = np.random.RandomState((self.seed + epoch) % 2**32).permutation(
                order
            )
        batches = [self.batches[i] for i in order]
        if self.num_shards > 1 and batches:
            rem = (-len(batches)) % self.num_shards
            batches = batches + batches[:rem]
            batches = batches[self.shard_id :: self.num_shards]
        return batches

    def __len__(self) -> int:
        return len(self._epoch_batches(self.epoch))

    def next_epoch_itr(self) -> Iterator[Dict]:
        """Iterate the rest of the current epoch (from ``iterations_in_epoch``)."""
        batches = self._epoch_batches(self.epoch)
        start = self.iterations_in_epoch
        for i in range(start, len(batches)):
            sample = self.dataset.collater([self.dataset[int(j)] for j in batches[i]])
            self.iterations_in_epoch = i + 1
            yield sample

    def end_epoch(self) -> None:
        self.epoch += 1
        self.iterations_in_epoch = 0

    def state_dict(self) -> Dict:
        return {"epoch": self.epoch, "iterations_in_epoch": self.iterations_in_epoch}

    def load_state_dict(self, state: Dict) -> None:
        self.epoch = int(state["epoch"])
        self.iterations_in_epoch = int(state["iterations_in_epoch"])
