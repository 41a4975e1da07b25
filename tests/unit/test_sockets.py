"""FrameReader, set_io_timeout and tune_tcp (ps.protocol.sockets): the data planes' socket helpers."""

import socket
import threading

import pytest

from ps.protocol.sockets import FrameReader, send_all, set_io_timeout, tune_tcp


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_frames_read_ahead_stay_for_the_next(pair):
    a, b = pair
    a.sendall(b"head" + b"body-1" + b"xyz" + b"next")  # several frames in one recv
    reader = FrameReader(b, size=64)
    assert bytes(reader.read(4)) == b"head"
    assert bytes(reader.read(6)) == b"body-1"
    out = bytearray(3)
    reader.read_into(memoryview(out))
    assert out == b"xyz" and reader.buffered == 4
    assert bytes(reader.read(4)) == b"next"


def test_frames_that_span_recvs_and_the_buffer(pair):
    a, b = pair
    payload = bytes(range(256)) * 40  # 10 KiB: larger than the reader's buffer
    reader = FrameReader(b, size=64)

    def write():  # in pieces, so the reader must wait for the rest
        for i in range(0, 6 + len(payload) + 100, 37):
            a.sendall((b"frame:" + payload + bytes(100))[i : i + 37])

    t = threading.Thread(target=write)
    t.start()
    assert bytes(reader.read(6)) == b"frame:"
    out = bytearray(len(payload))
    reader.read_into(memoryview(out))
    assert bytes(out) == payload
    assert bytes(reader.read(100)) == bytes(100)  # a frame longer than the buffer
    t.join(5)


def test_clean_close_before_a_frame_is_none_and_mid_frame_an_error(pair):
    a, b = pair
    reader = FrameReader(b, size=64)
    a.sendall(b"abc")
    a.shutdown(socket.SHUT_WR)
    assert bytes(reader.read(3)) == b"abc"
    assert reader.read(8) is None
    a2, b2 = socket.socketpair()
    with a2, b2:
        a2.sendall(b"abc")
        a2.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionError):
            FrameReader(b2).read(8)


def test_kernel_bound_on_a_wait_raises_timeout(pair):
    a, b = pair
    set_io_timeout(b, 0.05)
    assert b.gettimeout() is None  # blocking: no poll per call
    with pytest.raises(TimeoutError):
        FrameReader(b).read(1)
    set_io_timeout(a, 0.05)
    with pytest.raises(TimeoutError):  # nobody reads: the send buffer fills and the bound runs out
        send_all(a, [bytes(64 << 20)])


def test_tcp_data_plane_sockets_send_without_delay():
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()) as sock:
        tune_tcp(sock)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
