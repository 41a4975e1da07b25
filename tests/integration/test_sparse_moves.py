"""Sparse row buckets move like dense blocks (issue 16): ``move_units``, ``ps-admin resize``
and ``ps-admin rebalance`` carry a bucket's rows with their optimizer state; pushes of rows
racing a move are applied exactly once (SGD at lr 1, integer gradients: every row ends at
exactly minus the sum of its acknowledged pushes); pulls never answer short; a checkpoint
taken after a sparse move restores onto the new shard set.

Real shards on loopback (ports from the OS); ``ps-admin`` as a real process.
"""

from __future__ import annotations

import json
import numpy as np
import pytest

from launcher.placement_moves import move_units, newest_placement
from ps import ServerConfig, ShardServer
from ps._proto import ps_pb2
from ps.tables.placement import ROW_BUCKETS, row_buckets
from ps.tables.placement_map import PlacementMap
from tests.integration.test_placement import (Pushers, _channels, addresses, killed_resize_then_rerun, ps_admin,
                                              steps_within)
from worker import Client
from worker.client.transport import RetryPolicy, call

DIM = 4
IDS = np.arange(0, 3000, 3, dtype=np.int64)  # 1000 rows, spread over most buckets


def _grads(w: int, k: int, ids: np.ndarray) -> np.ndarray:
    """Integer gradients, distinct per worker, step and row."""
    base = (ids % 7 + w + 1 + k % 5).astype(np.float32)
    return np.repeat(base[:, None], DIM, axis=1)


class RowPushers(Pushers):
    """``workers`` clients pushing integer row gradients (SGD at lr 1) to sparse table "e"
    until :attr:`done` is set (then 5 more steps each; bounded as :class:`Pushers`); each step
    pushes a different slice of :data:`IDS` (every 4th step also pulls its rows: never
    short). :attr:`acknowledged` sums every push that returned, per row; :meth:`run` as
    :class:`Pushers`."""

    def __init__(self, servers: str, workers: int) -> None:
        super().__init__(servers, workers, 0)
        self.acknowledged = np.zeros((len(IDS), DIM), np.float64)

    def work(self, w: int) -> None:
        with Client(self.servers, wait_timeout_s=20.0) as client:  # a move never finished: fails
            total = np.zeros_like(self.acknowledged)
            extra = 0
            for k in steps_within(self.most_s):
                pick = np.arange((w * 97 + k * 131) % 200, len(IDS), 3)  # a third of the rows, shifting
                grads = _grads(w, k, IDS[pick])
                client.push_rows("e", IDS[pick], grads)
                total[pick] += grads
                if k % 4 == 3:
                    got = client.pull_rows("e", IDS[pick])
                    assert got.shape == (len(pick), DIM) and np.all(got <= 0)
                if k == 2:
                    self.going[w].set()
                extra += self.done.is_set()
                if extra >= 5:
                    break
            with self._lock:
                self.acknowledged += total
                self.addresses.append(list(client.addresses))

    def stored(self) -> np.ndarray:
        """The ids some acknowledged push touched (every gradient is >= 1): the rows stored."""
        return IDS[(self.acknowledged != 0).any(axis=1)]

    def check(self, servers: str) -> None:
        """Every row is exactly minus the sum of its acknowledged pushes."""
        with Client(servers) as reader:
            final = reader.pull_rows("e", IDS)
        assert np.array_equal(final.astype(np.float64), -self.acknowledged), \
            np.flatnonzero((final != -self.acknowledged).any(axis=1))[:10]


def _create(servers: str, **kw) -> None:
    with Client(servers) as creator:
        creator.create_sparse("e", DIM, optimizer="sgd", lr=1.0, **kw)


def test_rows_pushed_while_buckets_move_back_and_forth_are_each_applied_exactly_once(shards):
    """3 workers push (and pull) rows while a mover moves the buckets of the pushed rows
    between the two shards, 12 moves of up to 64 buckets."""
    with shards(2) as servers:
        _create(addresses(servers))
        channels = _channels(servers)
        pushers = RowPushers(addresses(servers), 3)
        buckets = np.unique(row_buckets("e", IDS))

        def admin() -> None:
            for rounds in range(12):
                current = newest_placement(channels, 10.0, RetryPolicy())
                owners = current.bucket_owners("e")
                chosen = buckets[(rounds * 64) % len(buckets):][:64]
                move_units(channels, {("e", True, int(k)): 1 - int(owners[k]) for k in chosen}, 10.0)

        pushers.run(admin)
        pushers.check(addresses(servers))
        with Client(addresses(servers)) as reader:
            status = reader.status()
        assert sum(s["counters"].get("moved", 0) for s in status) > 0  # the race happened
        placement = newest_placement(channels, 10.0, RetryPolicy())
        assert placement.version == 13 and sum(1 for u in placement.moved if u[1]) > 0
        rows = [next(t["rows"] for t in s["sparse_tables"] if t["name"] == "e") for s in status]
        owners = placement.row_shards("e", pushers.stored())
        assert rows == [int((owners == 0).sum()), int((owners == 1).sum())]  # every row where the map says
        for ch in channels:
            ch.close()


def test_a_row_push_applied_before_its_bucket_moved_and_retried_after_is_a_duplicate(shards):
    """The dedup-before-placement rule for PushRows: the old owner acknowledges the retry as a
    duplicate; it is never re-planned and applied again on the new owner."""
    with shards(2) as servers:
        _create(addresses(servers))
        channels = _channels(servers)
        with Client(addresses(servers)) as client:
            ids = np.array([42], dtype=np.int64)
            owner = int(PlacementMap.initial(2).row_shards("e", ids)[0])
            engine = client._engine
            seq = engine._next_seq[owner]
            client.push_rows("e", ids, np.ones((1, DIM), np.float32))
            move_units(channels, {("e", True, int(row_buckets("e", ids)[0])): 1 - owner}, 10.0)
            engine._next_seq[owner] = seq  # as if the reply was lost: the same message again
            engine._directory.placement = PlacementMap.initial(2)  # planned with the old map
            client.push_rows("e", ids, np.ones((1, DIM), np.float32))
            assert client.stats["duplicate"] == 1
            assert np.array_equal(client.pull_rows("e", ids), -np.ones((1, DIM), np.float32))  # once
            client.push_rows("e", ids, np.ones((1, DIM), np.float32))  # a new push goes to the new owner
            assert np.array_equal(client.pull_rows("e", ids), np.full((1, DIM), -2.0, np.float32))
        for ch in channels:
            ch.close()


def test_a_move_of_a_bucket_a_shard_does_not_hold_is_refused_and_changes_nothing(shards):
    with shards(2) as servers:
        _create(addresses(servers))
        channels = _channels(servers)
        with Client(addresses(servers)) as client:
            client.push_rows("e", IDS, np.ones((len(IDS), DIM), np.float32))
            k = int(row_buckets("e", IDS[:1])[0])
            owner = int(PlacementMap.initial(2).bucket_owners("e")[k])
            move_units(channels, {("e", True, k): owner}, 10.0)  # already there: nothing to do
            assert newest_placement(channels, 10.0, RetryPolicy()).version == 1
            try:
                move_units(channels, {("e", True, ROW_BUCKETS): 1 - owner}, 10.0)
            except Exception as exc:  # noqa: BLE001 - the error kind is checked below
                assert "bucket" in str(exc)
            else:
                raise AssertionError("a bucket out of range was moved")
            assert newest_placement(channels, 10.0, RetryPolicy()).version == 1
            assert np.array_equal(client.pull_rows("e", IDS), -np.ones((len(IDS), DIM), np.float32))
        for ch in channels:
            ch.close()


def test_a_take_with_malformed_arrays_is_refused_and_changes_nothing(shards):
    """A take whose payload is not a unit encoding, or whose bucket carries a clock that is no
    single integer, is INVALID_ARGUMENT (never INTERNAL); the shard keeps serving as before."""
    from ps.errors import InvalidArgumentError
    from ps.protocol.unit_wire import encode_units

    with shards(2) as servers:
        _create(addresses(servers))
        channels = _channels(servers)
        with Client(addresses(servers)) as client:
            client.push_rows("e", IDS, np.ones((len(IDS), DIM), np.float32))
            home = PlacementMap.initial(2)
            k = int(np.flatnonzero(home.bucket_owners("e") == 0)[0])  # an empty bucket shard 1 may take
            target = home.with_moves({("e", True, k): 1})
            bad_clock = {"ids": np.zeros(0, np.int64), "values": np.zeros((0, DIM), np.float32),
                         "tick": np.array([1, 2], np.int64)}
            for payload in (b"not a payload", encode_units([bad_clock])):
                request = ps_pb2.MoveRequest(placement=target.to_proto(), payload=payload)
                request.take.add(version=0).unit.CopyFrom(ps_pb2.PlacedUnit(table="e", rows=True, index=k))
                with pytest.raises(InvalidArgumentError):
                    call(channels[1], channels[1].move, request, 10.0, RetryPolicy())
            assert [s["placement"]["version"] for s in client.status()] == [1, 1]
            assert np.array_equal(client.pull_rows("e", IDS), -np.ones((len(IDS), DIM), np.float32))
        for ch in channels:
            ch.close()


@pytest.mark.parametrize("mode", ["async", "ssp"])
def test_resize_2_to_3_to_2_with_a_sparse_table_while_3_workers_push_rows(shards, mode):
    """Async or ssp (staleness 2; the row pulls wait for the slowest worker), SGD at lr 1,
    integer gradients, Adam-free: every row ends at minus the sum of its acknowledged pushes;
    the buckets end even over each new shard set."""
    with shards(3, mode=mode, staleness=2 if mode == "ssp" else 0) as servers:
        a, b, c = (s.address for s in servers)
        _create(f"{a},{b}")
        pushers = RowPushers(f"{a},{b}", 3)
        channels = {s.address: ch for s, ch in zip(servers, _channels(servers))}

        def spread(addrs: list[str]) -> list[int]:
            placement = newest_placement([channels[x] for x in addrs], 10.0, RetryPolicy())
            return np.bincount(placement.bucket_owners("e"), minlength=len(addrs)).tolist()

        def admin() -> None:
            grow = ps_admin("resize", "--servers", f"{a},{b}", "--to", f"{a},{b},{c}")
            assert grow.returncode == 0, grow.stderr
            assert json.loads(grow.stdout)["addresses"] == [a, b, c]
            assert spread([a, b, c]) == [1366, 1365, 1365]
            shrink = ps_admin("resize", "--servers", f"{a},{b},{c}", "--to", f"{b},{c}")
            assert shrink.returncode == 0, shrink.stderr
            assert spread([b, c]) == [2048, 2048]

        pushers.run(admin)
        assert pushers.addresses == [[b, c]] * 3  # no worker restarted
        pushers.check(f"{b},{c}")
        with Client(f"{b},{c}", observer=True) as reader:
            status = reader.status()
        placement = newest_placement([channels[b], channels[c]], 10.0, RetryPolicy())
        owners = placement.row_shards("e", pushers.stored())
        rows = [next(t["rows"] for t in s["sparse_tables"] if t["name"] == "e") for s in status]
        assert rows == [int((owners == 0).sum()), int((owners == 1).sum())]
        dropped = call(channels[a], channels[a].status, ps_pb2.StatusRequest(), 10.0, RetryPolicy())
        assert [t.rows for t in dropped.sparse_tables] == [0]  # the dropped server holds no row any more
        for ch in channels.values():
            ch.close()


def test_a_checkpoint_after_a_sparse_resize_restores_onto_the_new_shard_set(shards, tmp_path):
    d = str(tmp_path)
    with shards(3, checkpoint_dir=d) as servers:
        a, b, c = (s.address for s in servers)
        with Client(f"{a},{b}") as client:
            client.create_sparse("e", DIM, optimizer="adagrad", lr=0.5, max_rows=100_000, eviction="lfu")
            client.push_rows("e", IDS, _grads(0, 0, IDS))
        grow = ps_admin("resize", "--servers", f"{a},{b}", "--to", f"{a},{b},{c}")
        assert grow.returncode == 0, grow.stderr
        version = json.loads(grow.stdout)["version"]
        with Client(f"{a},{b},{c}") as client:
            client.push_rows("e", IDS, _grads(1, 1, IDS))
            expect = client.pull_rows("e", IDS)
            client.checkpoint("resized")
    restored = [ShardServer(ServerConfig(port=0, shard_index=i, num_shards=3, checkpoint_dir=d, restore=True)).start()
                for i in range(3)]
    try:
        with Client(addresses(restored)) as client:
            assert np.array_equal(client.pull_rows("e", IDS), expect)
            status = client.status()
            assert {s["placement"]["version"] for s in status} == {version}  # the resized map itself
            assert sum(next(t["rows"] for t in s["sparse_tables"]) for s in status) == len(IDS)  # none twice
            client.push_rows("e", IDS, _grads(2, 2, IDS))  # trains on, on the new set (adagrad state moved)
            assert not np.array_equal(client.pull_rows("e", IDS), expect)
    finally:
        for s in restored:
            s.stop(grace_s=0.5)


def test_rebalance_by_accesses_spreads_hot_row_buckets(shards):
    """A skewed workload (all rows in buckets of one shard): ps-admin rebalance --by accesses
    moves row buckets until the busiest shard is within 1.1x of the mean."""
    with shards(2) as servers:
        _create(addresses(servers))
        home = PlacementMap.initial(2)
        hot = IDS[home.row_shards("e", IDS) == 0]
        with Client(addresses(servers)) as client:
            for k in range(5):
                client.push_rows("e", hot, _grads(0, k, hot))
        out = ps_admin("rebalance", "--servers", addresses(servers), "--by", "accesses")
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["before"] > 1.9 and result["after"] <= 1.1 and result["moved"] > 0, result
        with Client(addresses(servers)) as client:  # the rows moved with their values
            assert np.array_equal(client.pull_rows("e", hot).astype(np.float64),
                                  -sum(_grads(0, k, hot).astype(np.float64) for k in range(5)))


def test_ps_admin_move_buckets_moves_rows_and_refuses_bad_buckets(shards):
    with shards(2) as servers:
        _create(addresses(servers))
        with Client(addresses(servers)) as client:
            client.push_rows("e", IDS, np.ones((len(IDS), DIM), np.float32))
            k = int(row_buckets("e", IDS[:1])[0])
            to = 1 - int(PlacementMap.initial(2).bucket_owners("e")[k])
            bad = ps_admin("move", "--servers", addresses(servers), "--table", "e", "--buckets", "x")
            assert bad.returncode != 0 and "--buckets" in bad.stderr
            out = ps_admin("move", "--servers", addresses(servers), "--table", "e", "--buckets", str(k),
                           "--to", str(to))
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["moved"] == [["e", True, k, to]]
            assert np.array_equal(client.pull_rows("e", IDS), -np.ones((len(IDS), DIM), np.float32))
            status = client.status()
        rows = [next(t["rows"] for t in s["sparse_tables"]) for s in status]
        owners = PlacementMap.initial(2).with_moves({("e", True, k): to}).row_shards("e", IDS)
        assert rows == [int((owners == 0).sum()), int((owners == 1).sum())] and int((row_buckets("e", IDS) == k).sum())


@pytest.mark.parametrize("kill_after", ["settle", "take"])
def test_a_sparse_resize_whose_admin_is_sigkilled_is_finished_by_a_rerun(shards, kill_after):
    """Killed after its gives (the buckets kept only by their sources) or after its takes:
    the rerun finishes, one map everywhere, buckets even, every acknowledged row push once."""
    with shards(3) as servers:
        a, b, c = (s.address for s in servers)
        _create(f"{a},{b}")
        pushers = RowPushers(f"{a},{b}", 3)

        pushers.run(lambda: killed_resize_then_rerun(f"{a},{b}", f"{a},{b},{c}", kill_after))
        pushers.check(f"{a},{b},{c}")
        with Client(f"{a},{b},{c}", observer=True) as reader:
            status = reader.status()
        assert len({json.dumps(s["placement"]) for s in status}) == 1  # one map everywhere
        channels = _channels(servers)
        placement = newest_placement(channels, 10.0, RetryPolicy())
        assert np.bincount(placement.bucket_owners("e"), minlength=3).tolist() == [1366, 1365, 1365]
        owners = placement.row_shards("e", pushers.stored())
        rows = [next(t["rows"] for t in s["sparse_tables"] if t["name"] == "e") for s in status]
        assert rows == [int((owners == i).sum()) for i in range(3)]
        for ch in channels:
            ch.close()
