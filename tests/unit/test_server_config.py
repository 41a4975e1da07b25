"""ServerConfig: a mode given by name is the Mode; an unknown one is refused at construction."""

import pytest

from ps import Mode, ServerConfig
from ps.shard.shard import Shard


@pytest.mark.parametrize("name, mode", [("async", Mode.ASYNC), ("sync", Mode.SYNC), ("ssp", Mode.SSP)])
def test_a_mode_given_by_name_is_the_mode_and_the_shard_follows_it(name, mode):
    config = ServerConfig(mode=name, num_workers=1)
    assert config.mode is mode
    shard = Shard(config)
    assert shard.gate.mode is mode


def test_an_unknown_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="mode must be one of async, sync, ssp, got 'bsp'"):
        ServerConfig(mode="bsp")
