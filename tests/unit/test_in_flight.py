"""``InFlight``: a plane's async parts wait for their replies at most MAX_IN_FLIGHT per shard."""

from __future__ import annotations

import pytest

from ps.errors import UnavailableError
from worker.planes.in_flight import MAX_IN_FLIGHT, InFlight
from worker.planes.part import Part
from worker.planes.step import Step


def step(independent: bool = True) -> Step:
    return Step({}, worker_id=0, session=1, clock=0, pull_step=0, deadline=0.0, independent=independent)


class Replies:
    """Reads record their order; ``fail`` names the tickets whose read raises."""

    def __init__(self, fail=()) -> None:
        self.read: list[str] = []
        self.discarded: list[str] = []
        self.fail = set(fail)

    def __call__(self, sent):
        self.read.append(sent.ticket)
        if sent.ticket in self.fail:
            raise UnavailableError(f"{sent.ticket} lost")
        return sent.ticket.upper()


def send(flight: InFlight, s: Step, shard: int, k: int):
    part = Part(shard, k, 99, push=())
    flight.before_send(part, s)
    return flight.sent(f"s{shard}p{k}", part, s)


def test_each_shard_keeps_its_own_window_and_its_replies_in_order():
    replies = Replies()
    flight, s = InFlight(replies), step()
    sent = [send(flight, s, shard, k) for k in range(MAX_IN_FLIGHT) for shard in (0, 1)]
    assert replies.read == []  # two shards: 2 x MAX_IN_FLIGHT outstanding, none read yet
    sent.append(send(flight, s, 1, MAX_IN_FLIGHT))
    assert replies.read == ["s1p0"]  # only shard 1's oldest made room
    assert flight.finish(sent[-1]) == f"S1P{MAX_IN_FLIGHT}"
    assert replies.read == [f"s1p{k}" for k in range(MAX_IN_FLIGHT + 1)]  # shard 1 in order; shard 0 untouched
    assert flight.finish(sent[0]) == "S0P0" and flight.finish(sent[2]) == "S0P1"
    assert replies.read[-2:] == ["s0p0", "s0p1"]


def test_a_failed_read_is_kept_for_its_finish_and_stale_parts_are_let_go():
    replies = Replies(fail={"s0p0"})
    discarded: list[str] = []
    flight, first = InFlight(replies, lambda stale: discarded.append(stale.ticket)), step()
    lost = [send(flight, first, 0, k) for k in range(MAX_IN_FLIGHT + 1)]  # reading s0p0 made room
    with pytest.raises(UnavailableError, match="s0p0 lost"):
        flight.finish(lost[0])
    left = send(flight, first, 1, 0)
    send(flight, step(), 0, 0)  # a new step: the first one's unread parts are let go
    assert sorted(discarded) == ["s0p1", "s0p2", "s0p3", "s1p0"] and replies.read == ["s0p0"]
    assert flight.finish(left) == "S1P0"  # its finish still reads it


def test_sync_parts_are_never_read_early():
    replies = Replies()
    flight, s = InFlight(replies), step(independent=False)
    sent = [send(flight, s, 0, k) for k in range(2 * MAX_IN_FLIGHT)]
    assert replies.read == []
    assert [flight.finish(x) for x in sent] == [f"S0P{k}" for k in range(2 * MAX_IN_FLIGHT)]
