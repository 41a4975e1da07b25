"""The live progress display of ``ps-launch``, fed by tailing the workers' metrics files.

:class:`MetricsTail` reads the complete JSON lines appended to each worker's metrics file
since the last read (a partly written last line waits for the next read).
:class:`Progress` shows, per worker, its step, epoch, loss and samples/s: on a terminal as
one progress bar per worker redrawn in place, elsewhere (a pipe, a log file, CI) as plain
lines at most every ``interval_s`` seconds. Neither is thread-safe; nothing here blocks
except the small file reads.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

__all__ = ["MetricsTail", "Progress"]

_BAR = 24


class MetricsTail:
    """Follows several JSONL files that other processes append to; files may not exist yet."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = [Path(p) for p in paths]
        self._offsets = [0] * len(self.paths)
        self._partial = [b""] * len(self.paths)

    def read_new(self) -> list[dict[str, Any]]:
        """Every record completed since the last call, file by file. Skips (and logs) bad lines."""
        out: list[dict[str, Any]] = []
        for i, path in enumerate(self.paths):
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets[i])
                    chunk = f.read()
            except FileNotFoundError:
                continue
            self._offsets[i] += len(chunk)
            data = self._partial[i] + chunk
            lines = data.split(b"\n")
            self._partial[i] = lines.pop()  # b"" after a complete line
            for line in lines:
                if not line.strip():
                    continue
                try:
                    out.append(json.loads(line))
                except ValueError:
                    log.warning("%s: skipping a line that is not JSON: %r", path, line[:80])
        return out


class Progress:
    """Per-worker progress of ``num_workers`` workers training for ``epochs`` epochs.

    ``tty``: redraw bars in place (default: whether ``stream`` is a terminal). Write the
    banner and summary through :meth:`print` so that the bars stay below them.
    """

    def __init__(self, stream: IO[str], num_workers: int, epochs: int, *, tty: bool | None = None,
                 interval_s: float | None = None) -> None:
        self.stream = stream
        self.epochs = epochs
        self.tty = _isatty(stream) if tty is None else tty
        self.interval_s = interval_s if interval_s is not None else (0.2 if self.tty else 2.0)
        self.latest: dict[int, dict[str, Any]] = {w: {} for w in range(num_workers)}
        self.status: dict[int, str] = {}
        self._drawn = 0            # lines of bars currently on screen (tty)
        self._last_render = -1e9
        self._printed: dict[int, int] = {}  # worker -> step last printed (plain)
        self._start = time.monotonic()

    def update(self, records: Sequence[dict[str, Any]]) -> None:
        """Take new step records (keeps the newest per worker)."""
        for r in records:
            w = int(r.get("worker", -1))
            if w in self.latest and r.get("step", 0) >= self.latest[w].get("step", 0):
                self.latest[w] = r

    def mark(self, worker: int, status: str) -> None:
        """Show ``status`` (e.g. "done", "failed") beside a worker."""
        self.status[worker] = status

    def render(self, *, force: bool = False) -> None:
        """Redraw (tty) or print lines for workers that moved (plain), at most every interval."""
        now = time.monotonic()
        if not force and now - self._last_render < self.interval_s:
            return
        self._last_render = now
        if self.tty:
            self._clear()
            lines = [self._bar_line(w) for w in sorted(self.latest)]
            self.stream.write("".join(line + "\n" for line in lines))
            self._drawn = len(lines)
        else:
            for w in sorted(self.latest):
                step = self.latest[w].get("step", 0)
                if step and self._printed.get(w) != step:
                    self._printed[w] = step
                    self.stream.write(f"[{now - self._start:6.1f} s] {self._text(w)}\n")
        self.stream.flush()

    def print(self, text: str) -> None:
        """Write ``text`` (a line) above the bars."""
        self._clear()
        self.stream.write(text.rstrip("\n") + "\n")
        self.stream.flush()
        self._drawn = 0

    def finish(self) -> None:
        """Draw the final state once more; the bars stay on screen."""
        self.render(force=True)
        self._drawn = 0

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")  # up to the first bar, clear below
            self._drawn = 0

    def _text(self, w: int) -> str:
        r = self.latest[w]
        if not r:
            return f"worker {w}: starting" + (f" ({self.status[w]})" if w in self.status else "")
        stale = r.get("staleness")
        text = (f"worker {w}: epoch {r.get('epoch', '?')}/{self.epochs} step {r.get('step', '?')}/"
                f"{r.get('total_steps', '?')} loss {float(r.get('loss', 'nan')):.4f} "
                f"{float(r.get('samples_per_s', 0.0)):.0f} samples/s")
        if stale is not None:
            text += f" staleness {stale}"
        if w in self.status:
            text += f" ({self.status[w]})"
        return text

    def _bar_line(self, w: int) -> str:
        r = self.latest[w]
        total = r.get("total_steps") or 0
        frac = min(1.0, r.get("step", 0) / total) if total else 0.0
        filled = int(frac * _BAR)
        return f"[{'#' * filled}{'.' * (_BAR - filled)}] {frac:4.0%} {self._text(w)}"


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False
