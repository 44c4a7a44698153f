"""Checkpoint writing: what survives a run killed while it saves."""

from types import SimpleNamespace

import pytest
import torch

from nmt_sd.training import checkpoint


def save_args(**kw):
    args = dict(
        no_epoch_checkpoints=False,
        save_interval=1,
        save_interval_updates=0,
        no_last_checkpoints=False,
        keep_last_epochs=-1,
        keep_interval_updates=-1,
    )
    return SimpleNamespace(**{**args, **kw})


def test_end_of_epoch_writes_last_epoch_and_best_with_equal_contents(tmp_path):
    paths = checkpoint.save_checkpoint(
        {"step": 7}, str(tmp_path), 3, 30, True, True, save_args()
    )
    names = [p.split("/")[-1] for p in paths]
    # fairseq order
    assert names == [
        "checkpoint3.pt",
        "checkpoint_best.pt",
        "checkpoint_last.pt",
    ]
    for n in names:
        assert torch.load(tmp_path / n, weights_only=True) == {"step": 7}


def test_a_kill_while_saving_leaves_the_new_checkpoint_last(tmp_path, monkeypatch):
    checkpoint.save_checkpoint(
        {"step": 1}, str(tmp_path), 1, 10, True, True, save_args()
    )

    def killed(src, dst):  # the process dies right after the first file is written
        (tmp_path / "checkpoint2.pt.tmp999").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "atomic_copy", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(
            {"step": 2}, str(tmp_path), 2, 20, True, True, save_args()
        )
    assert torch.load(tmp_path / "checkpoint_last.pt", weights_only=True) == {"step": 2}
    assert not (tmp_path / "checkpoint2.pt").exists()
    assert (tmp_path / "checkpoint2.pt.tmp999").exists()

    monkeypatch.undo()  # the resumed run's next save clears the partial file
    checkpoint.save_checkpoint(
        {"step": 3}, str(tmp_path), 2, 25, False, False, save_args()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint1.pt",
        "checkpoint_best.pt",
        "checkpoint_last.pt",
    ]
    assert torch.load(tmp_path / "checkpoint_last.pt", weights_only=True) == {"step": 3}


def test_copies_are_independent_files(tmp_path):
    checkpoint.save_checkpoint(
        {"step": 1}, str(tmp_path), 1, 10, True, True, save_args()
    )
    # a user rewrites one in place
    torch.save({"edited": True}, tmp_path / "checkpoint_best.pt")
    assert torch.load(tmp_path / "checkpoint_last.pt", weights_only=True) == {"step": 1}
    assert torch.load(tmp_path / "checkpoint1.pt", weights_only=True) == {"step": 1}
