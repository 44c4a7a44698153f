"""Shared fixtures: tiny dictionary, tiny Transformer args, ragged batches, a toy corpus."""

import argparse
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from nmt_sd.data.dataset import collate
from nmt_sd.data.dictionary import Dictionary
from nmt_sd.models import ARCH_PRESETS

SHARED_DATA = Path(
    os.environ.get(
        "NMT_SD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer end-to-end tests")


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)


def tiny_dict(n: int = 20) -> Dictionary:
    d = Dictionary()
    for i in range(n):
        d.add_symbol(f"w{i}", n - i)
    d.add_symbol("<mask>", 0)
    return d


def tiny_args(**over) -> argparse.Namespace:
    a = dict(ARCH_PRESETS["transformer"])
    a.update(
        encoder_embed_dim=16,
        encoder_ffn_embed_dim=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        decoder_embed_dim=16,
        decoder_ffn_embed_dim=32,
        decoder_layers=2,
        decoder_attention_heads=2,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        activation_fn="relu",
        encoder_normalize_before=False,
        decoder_normalize_before=False,
        share_decoder_input_output_embed=False,
        share_all_embeddings=False,
        no_scale_embedding=False,
        layernorm_embedding=False,
        max_source_positions=64,
        max_target_positions=64,
        label_smoothing=0.1,
    )
    a.update(over)
    return argparse.Namespace(**a)


def ragged_batch(
    d: Dictionary, lengths=((5, 4), (3, 6), (7, 2)), seed: int = 0, select=None
):
    """A B=3 batch with ragged source/target lengths (each ends with </s>); ``select``
    keeps only those sentences (same content as in the full batch)."""
    g = np.random.RandomState(seed)
    items = []
    for i, (ls, lt) in enumerate(lengths):
        src = np.append(g.randint(d.nspecial, len(d) - 1, size=ls - 1), d.eos())
        tgt = np.append(g.randint(d.nspecial, len(d) - 1, size=lt - 1), d.eos())
        items.append({"id": i, "source": src, "target": tgt})
    if select is not None:
        items = [items[i] for i in select]
    return collate(items, d.pad(), d.eos())


@pytest.fixture
def toy_corpus(tmp_path):
    """~60 synthetic parallel sentences: the target is the reversed source, new vocab."""
    g = random.Random(0)
    src_words = [f"s{i}" for i in range(12)]
    lines_s, lines_t = [], []
    for _ in range(60):
        n = g.randint(2, 7)
        s = [g.choice(src_words) for _ in range(n)]
        lines_s.append(" ".join(s))
        lines_t.append(" ".join("t" + w[1:] for w in reversed(s)))
    for split, sl in (
        ("train", slice(0, 48)),
        ("valid", slice(48, 54)),
        ("test", slice(54, 60)),
    ):
        (tmp_path / f"{split}.src").write_text("\n".join(lines_s[sl]) + "\n")
        (tmp_path / f"{split}.tgt").write_text("\n".join(lines_t[sl]) + "\n")
    return tmp_path
