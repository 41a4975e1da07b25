"""The arrays of moving units on the wire (``ps.protocol.unit_wire``): every kind of array a
move carries comes back equal, dtype and shape included, as a writable copy; anything else
is refused as INVALID_ARGUMENT, never unpickled."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from ps.errors import InvalidArgumentError
from ps.protocol.unit_wire import decode_units, encode_units

UNITS = [
    {"values": np.arange(7, dtype=np.float32), "state.m": np.ones(7, np.float64), "accesses": np.array(3)},
    {"ids": np.array([5, 9], np.int64), "values": np.arange(8, dtype=np.float16).reshape(2, 4),
     "last_used": np.zeros(2, np.int64), "hits": np.array([1, 2], np.uint32), "tick": np.array(12, np.int64)},
    {"ids": np.zeros(0, np.int64), "values": np.zeros((0, 4), np.float32), "held": np.array([True, False])},
    {},
]


def test_every_array_comes_back_equal_with_its_dtype_and_shape_and_writable():
    payload = encode_units(UNITS)
    back = decode_units(payload, len(UNITS))
    assert len(back) == len(UNITS)
    for sent, got in zip(UNITS, back):
        assert list(got) == list(sent)
        for name, arr in sent.items():
            assert got[name].dtype == arr.dtype and got[name].shape == arr.shape
            assert np.array_equal(got[name], arr)
            got[name][...] = 0  # a copy the shard may keep and update


def test_a_strided_array_is_sent_as_its_values():
    strided = np.arange(20, dtype=np.float32)[::2]
    assert np.array_equal(decode_units(encode_units([{"values": strided}]), 1)[0]["values"], strided)


def _payload(directory, data: bytes = b"\0" * 64) -> bytes:
    head = json.dumps(directory).encode()
    lead = struct.pack("<I", len(head)) + head
    return lead + bytes(-len(lead) % 8) + data


@pytest.mark.parametrize("payload", [
    b"",
    b"\xff\xff\xff\xff",
    struct.pack("<I", 3) + b"{{{",
    _payload({"not": "a list"}),
    _payload([[0, "values", "|O", [1], 0]]),           # an object array: never
    _payload([[0, "values", "<f4", [100], 0]]),        # past the end
    _payload([[5, "values", "<f4", [1], 0]]),          # a unit the message does not have
    _payload([[0, "values", "<f4", [-1], 0]]),
    _payload([[0, "values", "<f4", [1]]]),
    _payload([[0, 7, "<f4", [1], 0]]),
], ids=["empty", "no-directory", "bad-json", "not-a-list", "object", "past-end", "unit-range", "negative",
        "short-entry", "name-not-str"])
def test_a_malformed_payload_is_refused(payload):
    with pytest.raises(InvalidArgumentError, match="malformed Move payload"):
        decode_units(payload, 2)
