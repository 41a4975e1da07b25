"""The ``--metrics-port`` and ``--metrics-host`` flags of ``ps-server`` and ``ps-worker``.

Both serve Prometheus metrics over HTTP at ``http://HOST:PORT/metrics`` when
``--metrics-port`` is above 0 (off by default), behind the command's token when it has one
(``Authorization: Bearer <token>``). ``PS_METRICS_PORT`` and ``PS_METRICS_HOST`` set them
from the environment, as for every flag.
"""

from __future__ import annotations

from typing import Any


def add_arguments(p, *, host_default: str | None, host_help: str) -> None:
    """Add the two flags to parser ``p``."""
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve Prometheus metrics at http://METRICS_HOST:PORT/metrics (0: off); with a token, "
                        "scrapes need it (Authorization: Bearer)")
    p.add_argument("--metrics-host", default=host_default, help=host_help)


def check(args) -> None:
    """Raises ValueError for a port out of range."""
    if not 0 <= args.metrics_port <= 65535:
        raise ValueError(f"--metrics-port must be in [0, 65535], got {args.metrics_port}")


def server_config_fields(args) -> dict[str, Any]:
    """The ServerConfig fields of the parsed flags."""
    return {"metrics_port": args.metrics_port, "metrics_host": args.metrics_host or None}
