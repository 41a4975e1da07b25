"""``Part.unpushed_pulls``: the only pulled blocks whose held versions a plane names as known
(a block the same call pushes changes before the shard reads it)."""

from worker.planes.part import Part


def test_a_push_pull_names_known_versions_only_of_the_blocks_it_does_not_push():
    part = Part(0, 0, 1, push=(("w", 0), ("w", 2)), pull=("w", "b"),
                pull_blocks=(("w", 0), ("w", 1), ("w", 2), ("b", 0)))
    assert part.unpushed_pulls == (("w", 1), ("b", 0))
    assert part.unpushed_pulls is part.unpushed_pulls  # computed once: plans reuse their parts


def test_a_pull_names_every_block_it_pulls():
    blocks = (("w", 0), ("w", 1))
    assert Part(0, 0, 1, pull=("w",), pull_blocks=blocks).unpushed_pulls == blocks
