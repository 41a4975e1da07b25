import numpy as np
import pytest

from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError
from ps.protocol.wire import decode_framed, encode_framed, split_payload, wire_dtype


def _header(*counts, dtype=ps_pb2.FLOAT32):
    h = ps_pb2.PushHeader(worker_id=3, seq=9, step=2)
    for i, c in enumerate(counts):
        h.blocks.add(table="w", block=i, dtype=dtype, count=c)
    return h


def test_round_trip_is_an_ordinary_protobuf_message():
    a, b = np.arange(5, dtype=np.float32), np.arange(3, dtype=np.float32) * 2
    data = encode_framed(_header(5, 3).SerializeToString(), [a, b])
    msg = ps_pb2.PushRequest.FromString(data)             # any protobuf reader agrees
    assert msg.header.seq == 9 and msg.payload == a.tobytes() + b.tobytes()
    header, payload = decode_framed(data, ps_pb2.PushHeader)
    got = split_payload(header.blocks, payload)
    assert np.array_equal(got[0], a) and np.array_equal(got[1], b)
    assert not got[0].flags.writeable                       # a view, not a copy


def test_protobuf_encoded_message_decodes_too():
    a = np.arange(4, dtype=np.float64)
    msg = ps_pb2.PushRequest(header=_header(4, dtype=ps_pb2.FLOAT64), payload=a.tobytes())
    header, payload = decode_framed(msg.SerializeToString(), ps_pb2.PushHeader)
    assert np.array_equal(split_payload(header.blocks, payload)[0], a)


@pytest.mark.parametrize("counts, nbytes", [((5,), 16), ((5,), 24), ((-1,), 0)])
def test_length_mismatch_is_refused(counts, nbytes):
    with pytest.raises(InvalidArgumentError):
        split_payload(_header(*counts).blocks, memoryview(bytes(nbytes)))


def test_garbage_is_refused():
    with pytest.raises(InvalidArgumentError):
        decode_framed(b"\xff\xff\xff\xff\x0f", ps_pb2.PushHeader)


def test_dtypes():
    assert wire_dtype("float32") == ps_pb2.FLOAT32 and wire_dtype(np.float64) == ps_pb2.FLOAT64
    with pytest.raises(InvalidArgumentError):
        wire_dtype("int8")
    with pytest.raises(InvalidArgumentError):
        split_payload(_header(1, dtype=99).blocks, memoryview(bytes(4)))
