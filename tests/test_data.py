import numpy as np
import torch

from nmt_sd.data.batching import EpochBatchIterator, batch_by_size
from nmt_sd.data.dataset import LanguagePairDataset
from nmt_sd.data.dictionary import Dictionary, post_process
from nmt_sd.data.indexed_dataset import IndexedDataset, write_indexed
from tests.conftest import ragged_batch, tiny_dict


def test_dictionary_roundtrip(tmp_path):
    d = Dictionary.build(["a b c a", "b a"], padding_factor=8)
    assert [d[i] for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    # by count desc
    assert d.index("a") == 4 and d.index("b") == 5 and d.index("c") == 6
    assert len(d) % 8 == 0 and "<mask>" in d.indices
    d.save(tmp_path / "dict.txt")
    text = (tmp_path / "dict.txt").read_text().splitlines()
    assert text[:3] == ["a 3", "b 2", "c 1"]  # fairseq format, specials not written
    d2 = Dictionary.load(str(tmp_path / "dict.txt"))
    assert d2 == d and d2.mask() == d.mask()
    ids = d.encode_line("a c zzz")
    assert ids.tolist() == [4, 6, d.unk(), d.eos()]
    assert d.string(torch.tensor(ids)) == "a c <unk>"


def test_fairseq_dict_without_mask_gets_one(tmp_path):
    (tmp_path / "dict.txt").write_text("hello 5\nworld 2\n")
    d = Dictionary.load(str(tmp_path / "dict.txt"))
    assert d.index("hello") == 4 and d.index("world") == 5 and d.mask() == 6


def test_remove_bpe_sentencepiece():
    assert post_process("\u2581Hel lo \u2581world .", "sentencepiece") == "Hello world."
    assert post_process("hel@@ lo world", "@@ ") == "hello world"


def test_binarize_roundtrip(tmp_path):
    arrays = [np.array([5, 6, 2]), np.array([2]), np.array([7, 8, 9, 10, 2])]
    write_indexed(str(tmp_path / "x"), arrays, vocab_size=20)
    ds = IndexedDataset(str(tmp_path / "x"))
    assert len(ds) == 3 and ds.sizes.tolist() == [3, 1, 5]
    for a, b in zip(arrays, (ds[i] for i in range(3))):
        assert a.tolist() == b.tolist()


def test_collate_shapes_and_prev_output_tokens():
    d = tiny_dict()
    b = ragged_batch(d)
    src, tgt = b["net_input"]["src_tokens"], b["target"]
    prev = b["net_input"]["prev_output_tokens"]
    assert src.shape == (3, 7) and tgt.shape == (3, 6)
    assert b["ntokens"] == 4 + 6 + 2
    assert (prev[:, 0] == d.eos()).all()
    for i, n in enumerate([4, 6, 2]):
        assert prev[i, 1:n].tolist() == tgt[i, : n - 1].tolist()
        assert (tgt[i, n:] == d.pad()).all() and tgt[i, n - 1] == d.eos()


class _Sizes:
    def __init__(self, sizes):
        self.sizes = np.asarray(sizes)

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        return np.full(self.sizes[i], 5)


def test_batches_respect_max_tokens():
    g = np.random.RandomState(0)
    src, tgt = _Sizes(g.randint(1, 40, 500)), _Sizes(g.randint(1, 40, 500))
    ds = LanguagePairDataset(src, tgt, pad=1, eos=2)
    batches = batch_by_size(ds.ordered_indices(), ds.num_tokens, max_tokens=200)
    assert sorted(int(i) for b in batches for i in b) == list(range(500))
    for b in batches:
        assert len(b) * max(ds.num_tokens(int(i)) for i in b) <= 200
    mult = batch_by_size(
        ds.ordered_indices(), ds.num_tokens, 200, required_batch_size_multiple=8
    )
    assert sum(len(b) % 8 != 0 for b in mult) <= 1 + sum(len(b) < 8 for b in mult)


def test_epoch_iterator_deterministic_and_resumable():
    src, tgt = _Sizes(np.arange(1, 41)), _Sizes(np.arange(1, 41))
    ds = LanguagePairDataset(src, tgt, pad=1, eos=2)
    batches = batch_by_size(ds.ordered_indices(), ds.num_tokens, max_tokens=60)
    full = [
        b["id"].tolist()
        for b in EpochBatchIterator(ds, batches, seed=3, epoch=2).next_epoch_itr()
    ]
    it = EpochBatchIterator(ds, batches, seed=3, epoch=2)
    gen = it.next_epoch_itr()
    first = [next(gen)["id"].tolist() for _ in range(3)]
    resumed = EpochBatchIterator(ds, batches, seed=3)
    resumed.load_state_dict(it.state_dict())
    rest = [b["id"].tolist() for b in resumed.next_epoch_itr()]
    assert first + rest == full
    other = [
        b["id"].tolist()
        for b in EpochBatchIterator(ds, batches, seed=3, epoch=3).next_epoch_itr()
    ]
    assert other != full  # a new epoch reshuffles
    shards = [
        EpochBatchIterator(ds, batches, seed=3, num_shards=2, shard_id=k)
        for k in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1])
