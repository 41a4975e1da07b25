"""``WorkerInterrupt``: what ``ps-worker`` does on its first SIGINT or SIGTERM.

The signal handler only sets a flag (an exception raised inside a blocking gRPC call can
leave gRPC's locks held); the training loop checks it before every step. But a worker
blocked in a wait (a sync pull waiting for a worker that never comes, a server that does
not answer) would not look at it for minutes. So a thread of this object, woken by the
signal:

1. says what the worker was doing and what happens now, on stderr, at once::

       ps-worker: SIGINT during pull for step 12 (waiting 41 s on other workers): leaving the
       cluster and exiting with status 130; a second Ctrl-C exits at once

2. gives the main thread ``GRACE_S`` to stop by itself (it was between steps);
3. otherwise leaves the cluster from this thread (:meth:`worker.Client.leave_now`, at
   most ``LEAVE_TIMEOUT_S``), which makes the blocked call fail so the main thread
   unwinds, closes the client and exits with 128 + the signal number;
4. if the main thread still has not finished ``EXIT_AFTER_S`` later (a server that does
   not answer), or at once when the worker had not registered yet (still connecting),
   exits the process itself with that status.

So the first signal ends the worker within about ``GRACE_S + LEAVE_TIMEOUT_S +
EXIT_AFTER_S`` seconds (6 s); a second signal exits at once
(:class:`launcher.worker_cli.StopSignals`). :meth:`start` starts the thread;
:meth:`close` (the main thread finished) stops it. Thread-safe.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import IO


#: seconds the main thread gets to stop by itself after the first signal
GRACE_S = 0.5
#: the longest the Leave calls may take
LEAVE_TIMEOUT_S = 3.0
#: seconds after leaving before the process exits without the main thread
EXIT_AFTER_S = 2.5


class WorkerInterrupt:
    """Acts on the first signal of ``stop`` (a ``StopSignals``) while the worker runs."""

    def __init__(self, stop, prog: str = "ps-worker", err: IO[str] | None = None) -> None:
        self.stop = stop
        self.prog = prog
        self.err = err
        self.client = None   # set before connecting: the client to take out of the cluster
        self.warner = None   # a SlowWaitWarner: says which call runs and for how long
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> WorkerInterrupt:
        """Start the thread that waits for the signal. Does not block."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ps-worker-interrupt", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """The main thread is done (it returns its exit status itself). Idempotent."""
        self._finished.set()
        self.stop.arrived.set()  # wakes the thread if no signal came
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(1.0)

    def doing(self) -> str:
        """What the worker is doing now, for the message."""
        if self.client is None:
            return "start-up (reading the data)"
        if self.client.worker_id < 0:
            return "start-up (connecting to the servers)"
        current = self.warner.current() if self.warner is not None else None
        if current is None:
            return "training"
        what, seconds = current
        return f"{what} (waiting {seconds:.0f} s on other workers)" if seconds >= 1 else what

    def _say(self, text: str) -> None:
        out = self.err if self.err is not None else sys.stderr
        print(f"{self.prog}: {text}", file=out, flush=True)

    def _run(self) -> None:
        self.stop.arrived.wait()  # bounded by close(), which every run of ps-worker calls
        if self._finished.is_set() or not self.stop.requested:
            return
        name = signal.Signals(self.stop.signum).name
        again = "a second Ctrl-C" if self.stop.signum == signal.SIGINT else "a second signal"
        self._say(f"{name} during {self.doing()}: leaving the cluster and exiting with status "
                  f"{self.stop.exit_code}; {again} exits at once")
        if self._finished.wait(GRACE_S):
            return
        client = self.client
        if client is not None and client.worker_id >= 0:  # registered: leave, so the call fails
            unreached = client.leave_now(LEAVE_TIMEOUT_S)
            if unreached:
                self._say(f"could not leave {', '.join(unreached)} (its lease will expire)")
            if self._finished.wait(EXIT_AFTER_S):
                return
        self._say("the worker did not stop by itself; exiting")
        sys.stdout.flush()
        os._exit(self.stop.exit_code)
