"""launcher.worker_ops: --rank auto, the step rows counted in the metrics, the flags."""

import argparse
import types

import pytest

from launcher import worker_cli
from launcher.worker_ops import AUTO, adopt_rank, batch_rows, rank_arg
from worker.training.loop import TrainConfig


def test_rank_is_an_index_or_auto():
    assert rank_arg("3") == 3 and rank_arg("auto") == AUTO == rank_arg(" AUTO ")
    for bad in ("-1", "first"):
        with pytest.raises(argparse.ArgumentTypeError):
            rank_arg(bad)
    args = worker_cli.build_parser(environ={"PS_RANK": "auto", "PS_SERVERS": "h:1"}).parse_args([])
    assert args.rank == AUTO and args.metrics_port == 0 and args.warn_after == 10.0


def test_auto_rank_takes_the_assigned_id_and_reshards_the_data():
    cfg = TrainConfig(num_workers=2, epochs=1)
    cfg1, model, train_ds, test_ds = adopt_rank(types.SimpleNamespace(worker_id=1), cfg)
    assert cfg1.rank == 1 and len(train_ds) > 0 and len(test_ds) > 0
    _, _, train0, _ = adopt_rank(types.SimpleNamespace(worker_id=0), cfg)
    assert len(train0) + len(train_ds) > len(train_ds)  # two different shards of one dataset
    with pytest.raises(ValueError, match="explicit --rank"):
        adopt_rank(types.SimpleNamespace(worker_id=2), cfg)


def test_batch_rows_counts_the_short_last_batch_of_each_epoch():
    rows = [batch_rows(step, 70, 32) for step in range(1, 7)]
    assert rows == [32, 32, 6, 32, 32, 6]
    assert batch_rows(1, 10, 32) == 10
