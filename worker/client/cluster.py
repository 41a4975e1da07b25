"""``Cluster``: the gRPC channels to every shard, with the client's deadlines and retries."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ps.errors import UnavailableError
from ps.protocol import tls
from worker.client.transport import RetryPolicy, ShardChannel, call, fan_out

log = logging.getLogger(__name__)

#: seconds without an answer from a server before connecting says whom it waits for
NOTICE_AFTER_S = 2.0


class Cluster:
    """One :class:`~worker.client.transport.ShardChannel` per server, in server order.

    The constructor does no I/O; :meth:`open` reads the TLS files and makes the channels
    (which connect lazily). Calls take ``timeout_s`` as their deadline, or
    ``wait_timeout_s`` with ``wait=True`` (calls that may wait on other workers), and are
    retried per ``retry``. Thread-safe once open (the heartbeat thread shares it).
    """

    def __init__(self, addresses: Sequence[str], *, timeout_s: float, wait_timeout_s: float, retry: RetryPolicy,
                 max_message_bytes: int, token: str | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 tls_server_name: str | None = None) -> None:
        self.addresses = list(addresses)
        self.timeout_s = timeout_s
        self.wait_timeout_s = wait_timeout_s
        self.retry = retry
        self.max_message_bytes = max_message_bytes
        self._token = token
        self._tls = (tls_ca, tls_cert, tls_key, tls_server_name)
        self.channels: list[ShardChannel] = []
        self._credentials = None

    def __len__(self) -> int:
        return len(self.addresses)

    def open(self) -> None:
        """Make the channels. Reads the TLS files; raises OSError when one cannot be read."""
        ca, cert, key, server_name = self._tls
        self._credentials = tls.channel_credentials(ca, cert, key) if ca or cert else None
        self.channels = [self._channel(a) for a in self.addresses]

    def _channel(self, address: str) -> ShardChannel:
        return ShardChannel(address, self.max_message_bytes, credentials=self._credentials, token=self._token,
                            server_name=self._tls[3])

    def retarget(self, addresses: Sequence[str]) -> None:
        """The shards are now ``addresses`` (a resize): keeps the channels of those that stay,
        makes channels to the new ones (connecting lazily) and closes the others. Does not
        block. Callers re-set :meth:`on_lost_registration` (it is per shard index)."""
        by_address = {ch.address: ch for ch in self.channels}
        channels = [by_address.pop(a, None) or self._channel(a) for a in addresses]
        self.addresses, self.channels = list(addresses), channels
        for ch in by_address.values():
            ch.close()

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every channel connects. Raises UnavailableError after ``timeout_s`` for one.

        A server that has not answered after :data:`NOTICE_AFTER_S` is named in a warning
        (``waiting for HOST:PORT ...``): a silent wait for a server that is not there looks
        like a hang.
        """
        for ch in self.channels:
            started = time.monotonic()
            try:
                ch.wait_ready(min(NOTICE_AFTER_S, timeout_s))
                continue
            except UnavailableError:
                left = timeout_s - (time.monotonic() - started)
                if left <= 0:
                    raise
            log.warning("waiting for %s ... (no server answers there yet; giving up after %g s)", ch.address, timeout_s)
            try:
                ch.wait_ready(left)
            except UnavailableError:
                raise UnavailableError(f"{ch.address}: no server answered within {timeout_s:g} s") from None

    def call(self, shard: int, method: str, request: Any, *, wait: bool = False) -> Any:
        """``method`` (a :class:`ShardChannel` stub name) of one shard. Blocks; raises PSError."""
        ch = self.channels[shard]
        return call(ch, getattr(ch, method), request, self.wait_timeout_s if wait else self.timeout_s, self.retry)

    def fan_out(self, method: str, requests: Sequence[Any] | Mapping[int, Any], *, wait: bool = False) -> list[Any]:
        """``method`` on many shards at once: ``requests`` has one per shard, or maps shards to
        theirs. Replies in that order. Blocks until all answered; raises the first PSError."""
        items = requests.items() if isinstance(requests, Mapping) else enumerate(requests)
        calls = [(self.channels[i], getattr(self.channels[i], method), r) for i, r in items]
        return fan_out(calls, self.wait_timeout_s if wait else self.timeout_s, self.retry)

    def on_lost_registration(self, rejoin: Callable[[int], None] | None) -> None:
        """Have calls that find this worker unregistered run ``rejoin(shard)``, then retry (None: stop)."""
        for i, ch in enumerate(self.channels):
            ch.rejoin = None if rejoin is None else (lambda i=i: rejoin(i))

    def close(self) -> None:
        """Close every channel. Does not block or raise."""
        for ch in self.channels:
            ch.close()
