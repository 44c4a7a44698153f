"""PartStore: resumable decoding output (nmt_sd/generation/parts.py)."""

import numpy as np
import pytest

from nmt_sd.errors import NmtSdError
from nmt_sd.generation.parts import PartStore


def test_parts_are_flushed_on_interval_and_reloaded(tmp_path):
    root = str(tmp_path / "p")
    store = PartStore(root, {"beam": 5}, interval=0.0)  # every add is written at once
    store.add(7, np.array([4, 5, 2]))
    store.add(3, np.array([2]))
    assert len(list((tmp_path / "p").glob("part*.npz"))) == 2
    again = PartStore(root, {"beam": 5}, interval=3600.0)
    assert (
        sorted(again.done) == [3, 7]
        and again.done[7].tolist() == [4, 5, 2]
        and again.done[3].tolist() == [2]
    )
    again.add(1, np.array([9, 2]))  # not yet due: held in memory
    assert (
        len(list((tmp_path / "p").glob("part*.npz"))) == 2
        and 1 not in PartStore(root, {"beam": 5}).done
    )
    with pytest.raises(NmtSdError, match=r"other settings \(beam, lenpen\)"):
        PartStore(root, {"beam": 4, "lenpen": 1.0})
    again.remove()
    assert not (tmp_path / "p").exists()
