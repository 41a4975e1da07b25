"""``--servers HOST:PORT,HOST:PORT``: the address list of ``ps-worker`` and ``ps-admin``.

Checked when the flag is parsed, so that a wrong value (``PS_SERVERS=2`` meant for an
older ``ps-launch``, a missing port) is a usage error naming the flag and, through
:mod:`launcher.envargs`, the variable it came from, before anything connects. Pure.
"""

from __future__ import annotations

import argparse


def server_addresses(value: str) -> str:
    """The list unchanged when every entry is ``HOST:PORT`` (``[v6]:PORT``) or ``unix:PATH``.

    Raises argparse.ArgumentTypeError naming the first bad entry.
    """
    entries = [e.strip() for e in str(value).split(",")]
    for entry in entries:
        if entry.startswith("unix:") and len(entry) > len("unix:"):
            continue
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise argparse.ArgumentTypeError(
                f"{entry!r} is not HOST:PORT; --servers takes the servers' addresses, HOST:PORT,HOST:PORT "
                "(or unix:PATH), in the same order on every worker")
    return ",".join(entries)
