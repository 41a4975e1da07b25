"""Summarise a py-spy ``--format raw`` (collapsed stacks) profile: top leaf and inclusive frames.

    python -m bench.profile_summary PROFILE.txt [--top 15] [--busy]

Each line of a collapsed profile is ``frame;frame;...;leaf COUNT``. Prints the share of
samples whose leaf is each function ("self") and the share whose stack contains it
("incl."), so a profile can be pasted into a report as a short table. Only reads files.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter


def _name(frame: str) -> str:
    # py-spy frames look like "function (file.py:123)"; drop the line number
    frame = re.sub(r":\d+\)$", ")", frame.strip())
    return frame


#: frames that mean "waiting, not working": a stack through one of them is idle
IDLE = ("Condition.wait", "poll (", "epoll_wait", "recvmsg (", "accept4", "_recv_exact", "sock_recv",
        "select (", "_queue_SimpleQueue_get", "Event.wait", "wait_for_termination", "channel_spin",
        "_serve (grpc/_server.py)", "Thread.join", "Popen.wait")


def summarise(path: str, top: int = 15, busy: bool = False) -> str:
    leaf: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            n = int(count)
            frames = [_name(x) for x in stack.split(";") if x]
            if not frames or (busy and any(i in f for f in frames for i in IDLE)):
                continue
            total += n
            leaf[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    out = [f"{path}: {total} {'busy ' if busy else ''}samples", "", "| self % | function |", "|---:|---|"]
    for fr, n in leaf.most_common(top):
        out.append(f"| {100 * n / total:5.1f} | `{fr}` |")
    out += ["", "| incl. % | function |", "|---:|---|"]
    for fr, n in incl.most_common(top + 10):
        out.append(f"| {100 * n / total:5.1f} | `{fr}` |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profiles", nargs="+")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--busy", action="store_true", help="drop stacks that are waiting (poll, recv, locks)")
    args = p.parse_args()
    for path in args.profiles:
        print(summarise(path, args.top, args.busy))
        print()


if __name__ == "__main__":
    main()
