"""How every ``ps-*`` command line program logs: timestamped records on stderr."""

from __future__ import annotations

import logging
import sys

#: one line per record: time, logger name, level, message
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure_logging(level: str) -> None:
    """Send this process's log records at ``level`` (e.g. "INFO", any case) and above to stderr.

    Call once, from a ``main``; does not block. Raises ValueError for an unknown level name.
    """
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)
