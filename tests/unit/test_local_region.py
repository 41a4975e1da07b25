"""LocalRegion: which arrays are the region's own (a zero-copy push or pull) and which are not."""

import numpy as np

from ps.tables.spec import TableSpec
from worker.planes.local_region import LocalRegion


def test_the_regions_arrays_and_their_views_are_its_own_and_other_arrays_are_not():
    region = LocalRegion.allocate([TableSpec("w", (8, 8)), TableSpec("b", (64,))], generation=1)
    try:
        push, pull = region.push["w"], region.pull["w"]
        assert region.is_push("w", push) and region.is_pull("w", pull)
        assert region.is_push("w", push.reshape(8, 8).reshape(-1))   # what buffers() hands out, flattened
        assert region.is_pull("w", region.user_pull["w"].reshape(-1))
        assert not region.is_push("w", pull) and not region.is_pull("w", push)  # the other area
        assert not region.is_push("w", region.push["b"])              # same size and dtype, another table
        assert not region.is_push("w", np.zeros(64, np.float32))      # the user's own memory
        assert not region.is_push("w", push[::2])                     # part of it only
        assert not region.is_pull("w", pull.view(np.int32))           # another dtype
    finally:
        region.close()
