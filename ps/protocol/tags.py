"""Checkpoint tags, as the Checkpoint and Restore calls name them: checked and made here.

Pure functions; thread-safe.
"""

from __future__ import annotations

import re
import time

from ps.errors import InvalidArgumentError

TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_tag(tag: str) -> str:
    """Returns ``tag``; raises InvalidArgumentError unless it is a safe directory name."""
    if not isinstance(tag, str) or not TAG.match(tag):
        raise InvalidArgumentError(f"checkpoint tag {tag!r} must be 1-128 letters, digits and _ . - "
                                   "(not starting with . _ or -)")
    return tag


def new_tag(prefix: str) -> str:
    """``<prefix>-<UTC time to the millisecond>``, e.g. ``auto-20250101T120000.123Z``."""
    now = time.time()
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now * 1000) % 1000:03d}Z"
