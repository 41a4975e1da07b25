"""``ps-admin``: operate a running cluster. One subcommand per verb:

- ``ps-admin checkpoint --servers A,B [--tag T]``: every shard writes a checkpoint under
  one tag (in sync mode at one step); prints the tag, version and files as JSON.
- ``ps-admin shutdown --servers A,B`` (or ``stop``): every shard stops gracefully (final checkpoint).
  With ``--when-done`` it first waits until the run is over (:mod:`launcher.done_watch`):
  every one of ``--num-workers`` workers joined and left, or no worker was live for
  ``--idle`` seconds. ``docker compose up`` runs it so, as its ``stop`` service.
- ``ps-admin export --servers A,B --out PATH [--tables T,U] [--force]``: every table (or
  ``--tables``) to one ``.npz`` or ``.safetensors`` file, atomically, refusing to replace
  an existing file without ``--force`` (layout: :mod:`worker.export.model_file`); prints
  the path, format, tables, keys and bytes as JSON.
- ``ps-admin status --servers A,B [--json]``: one table of every shard's tables, version,
  blocks and bytes, the workers it knows with their clocks and last contact, and in sync
  mode the workers the open step still waits for (:mod:`launcher.status_table`), and each
  shard's placement map version.
- ``ps-admin move --servers A,B --table T --blocks 0,3 --to 1`` (a sparse table: ``--buckets``,
  its row buckets 0..4095): move dense blocks or row buckets to shard ``--to`` while workers train, under a new placement map version (:mod:`launcher.placement_moves`,
  ``docs/placement.md``); prints the new map as JSON. It first finishes any move left half
  done (an admin killed mid-move); without ``--blocks`` it only does that.
- ``ps-admin resize --servers A,B --to A,B,C``: change the shard set while workers train
  (every mode): dense blocks and sparse row buckets move to balance the
  new set, workers learn the new servers from the placement map. Run again after an interruption, it finishes.
- ``ps-admin rebalance --servers A,B [--by bytes|accesses] [--ratio 1.1] [--auto S --rounds N]``:
  move dense blocks and sparse row buckets until the busiest shard's load is at most ``--ratio`` times the mean;
  prints the ratio before and after as JSON; with ``--auto`` again every S seconds, N times.

Connection flags (``--token-file``/``PS_TOKEN``, ``--tls-ca``, ``--tls-cert``,
``--tls-key``) are those of the workers. Exits 0 on success, 1 on failure (with the
error on stderr), 2 on bad usage. New verbs add a function to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable

from launcher import client_safety, status_table
from launcher.done_watch import DoneWatch, wait_until_done
from launcher.envargs import EnvArgumentParser
from launcher.server_addresses import server_addresses
from ps.protocol import tls
from ps._proto import ps_pb2
from ps.checkpoint.files import check_tag
from ps.config import DEFAULT_MAX_MESSAGE_BYTES
from ps.errors import PSError
from worker import Client
from worker.client.transport import RetryPolicy, ShardChannel, fan_out


def _tag(value: str) -> str:
    """``--tag``: a checkpoint tag (ps.checkpoint.files.check_tag); argparse.ArgumentTypeError otherwise."""
    try:
        return check_tag(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _connection_args(p) -> None:
    p.add_argument("--servers", required=True, type=server_addresses,
                   help="the shards, HOST:PORT,HOST:PORT in the workers' order")
    client_safety.add_arguments(p)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the servers")


def build_parser(environ=None) -> EnvArgumentParser:
    p = EnvArgumentParser(prog="ps-admin", description="Operate a running parameter-server cluster.",
                          environ=environ)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = sub.add_parser("checkpoint", help="checkpoint every shard under one tag", environ=environ)
    _connection_args(c)
    c.add_argument("--tag", default=None, type=_tag, help="checkpoint name (default ckpt-<UTC time>)")
    s = sub.add_parser("shutdown", aliases=["stop"], help="stop every shard gracefully", environ=environ)
    _connection_args(s)
    s.add_argument("--when-done", action="store_true",
                   help="first wait until the run is over: every worker joined and left, or none live for --idle s")
    s.add_argument("--num-workers", type=int, default=0,
                   help="--when-done: the workers the run expects (0: at least one)")
    s.add_argument("--idle", type=float, default=60.0, metavar="SECONDS",
                   help="--when-done: stop once no worker was live this long (workers that never joined)")
    st = sub.add_parser("status", help="one table: shards, tables, workers, whom a sync step waits for",
                        environ=environ)
    _connection_args(st)
    st.add_argument("--json", action="store_true", help="print each shard's status as JSON instead")
    e = sub.add_parser("export", help="write every table to one .npz or .safetensors file", environ=environ)
    _connection_args(e)
    e.add_argument("--out", required=True, help="the file to write: PATH.npz, or PATH.safetensors (needs safetensors)")
    e.add_argument("--tables", default=None, help="comma-separated table names (default: every table)")
    e.add_argument("--force", action="store_true", help="replace the file if it exists")
    m = sub.add_parser("move", help="move dense blocks or sparse row buckets to another shard (a new placement "
                       "map version)", environ=environ)
    _connection_args(m)
    m.add_argument("--table", default="", help="the table whose blocks (dense) or row buckets (sparse) move")
    m.add_argument("--blocks", default="", help="comma-separated block indices (none: only finish an "
                   "interrupted move)")
    m.add_argument("--buckets", default="", help="comma-separated row bucket indices of a sparse table "
                   "(0..4095)")
    m.add_argument("--to", default=0, type=int, help="the shard (index in --servers) they move to")
    m.add_argument("--kill-after", default="", choices=("", "settle", "take"),
                   help="fault injection for tests: SIGKILL ps-admin right after this step of the move")
    r = sub.add_parser("resize", help="change the shard set while workers train (adds or drops servers)",
                       environ=environ)
    _connection_args(r)
    r.add_argument("--to", required=True, type=server_addresses, dest="to_servers",
                   help="the new shard list, HOST:PORT,... (new servers started empty)")
    r.add_argument("--kill-after", default="", choices=("", "settle-first", "settle", "take", "batch-settle"),
                   help="fault injection for tests: SIGKILL ps-admin right after this step of the resize")
    rb = sub.add_parser("rebalance", help="move dense blocks until the busiest shard holds <= --ratio x the mean",
                        environ=environ)
    _connection_args(rb)
    rb.add_argument("--by", default="bytes", choices=("bytes", "accesses"),
                    help="the load: bytes of values and optimizer state, or pushes and pulls per block")
    rb.add_argument("--ratio", type=float, default=1.1, help="the busiest shard's load over the mean to reach")
    rb.add_argument("--auto", type=float, default=0.0, metavar="SECONDS",
                    help="while training: rebalance every SECONDS, --rounds times (0: once)")
    rb.add_argument("--rounds", type=int, default=60, help="--auto: how many times")
    return p


def rebalance(args) -> int:
    """Rebalance the shards' load; prints the ratio before and after as JSON (a line per
    round with ``--auto``: every ``--auto`` seconds, ``--rounds`` times). Blocks."""
    from launcher.placement_moves import rebalance as rebalance_shards

    if args.auto < 0 or args.rounds < 1:
        raise ValueError("--auto must be >= 0 and --rounds >= 1")
    channels = _channels(args)
    pause = threading.Event()  # never set: a bounded wait between rounds
    try:
        for i in range(args.rounds if args.auto else 1):
            if i:
                pause.wait(args.auto)
            print(json.dumps(rebalance_shards(channels, args.by, args.ratio, args.timeout)), flush=True)
    finally:
        for ch in channels:
            ch.close()
    return 0


def _channels(args, addresses: str | None = None) -> list[ShardChannel]:
    """One control channel per ``--servers`` entry (or ``addresses``), with the connection flags."""
    kw = client_safety.client_kwargs(args)
    creds = tls.channel_credentials(kw["tls_ca"], kw["tls_cert"], kw["tls_key"]) if kw["tls_ca"] else None
    return [ShardChannel(a.strip(), DEFAULT_MAX_MESSAGE_BYTES, credentials=creds, token=kw["token"],
                         server_name=kw["tls_server_name"]) for a in (addresses or args.servers).split(",")]


def resize(args) -> int:
    """Resize the shard set from ``--servers`` to ``--to``; prints the placement map installed."""
    from launcher.placement_moves import resize as resize_shards

    old = [a.strip() for a in args.servers.split(",")]
    new = [a.strip() for a in args.to_servers.split(",")]
    union = list(dict.fromkeys(old + new))
    channels = dict(zip(union, _channels(args, ",".join(union))))
    try:
        placement = resize_shards(channels, old, new, args.timeout, kill_after=args.kill_after)
    finally:
        for ch in channels.values():
            ch.close()
    print(json.dumps(placement.to_json()))
    return 0


def move(args) -> int:
    """Move ``--blocks`` (or ``--buckets``) of ``--table`` to shard ``--to``; prints the placement map installed."""
    from launcher.placement_moves import move_units

    units = []
    for flag, rows in (("blocks", False), ("buckets", True)):
        text = getattr(args, flag)
        try:
            units += [(args.table, rows, int(b)) for b in text.split(",") if b.strip()]
        except ValueError:
            raise ValueError(f"--{flag} must be comma-separated integers, got {text!r}") from None
    if units and not args.table:
        raise ValueError("--blocks and --buckets need --table")
    channels = _channels(args)
    try:
        placement = move_units(channels, {unit: args.to for unit in units}, args.timeout,
                               kill_after=args.kill_after)
    finally:
        for ch in channels:
            ch.close()
    print(json.dumps(placement.to_json()))
    return 0


def export(args) -> int:
    """Write the cluster's tables to ``--out`` (worker.export) and print what was written."""
    from worker.export import export_model

    tables = [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None
    result = export_model(args.servers, args.out, tables=tables, force=args.force, timeout_s=args.timeout,
                          **client_safety.client_kwargs(args))
    print(json.dumps(result.to_json()))
    return 0


def checkpoint(args) -> int:
    with Client(args.servers, observer=True, connect_timeout_s=args.timeout, wait_timeout_s=args.timeout,
                **client_safety.client_kwargs(args)) as client:
        print(json.dumps(client.checkpoint(args.tag)))
    return 0


def shutdown(args) -> int:
    """Stop every shard; with ``--when-done`` first wait (blocks) until the run is over."""
    kw = client_safety.client_kwargs(args)
    if args.when_done:
        if args.num_workers < 0 or not args.idle >= 0:
            raise ValueError("--num-workers and --idle must be >= 0")
        print(f"ps-admin stop: waiting until the run is over ({args.num_workers or 'any number of'} worker(s) "
              f"joined and left, or none live for {args.idle:g} s)", file=sys.stderr, flush=True)
        with Client(args.servers, observer=True, local=False, connect_timeout_s=args.timeout,
                    timeout_s=args.timeout, **kw) as client:
            reason = wait_until_done(client.status, DoneWatch(args.num_workers, args.idle), args.timeout)
        print(f"ps-admin stop: the run is over: {reason}; stopping the servers", file=sys.stderr, flush=True)
    channels = _channels(args)
    try:
        fan_out([(ch, ch.shutdown, ps_pb2.ShutdownRequest()) for ch in channels], args.timeout,
                RetryPolicy(attempts=3))
    finally:
        for ch in channels:
            ch.close()
    print(json.dumps({"shutdown": [ch.address for ch in channels]}))
    return 0


def status(args) -> int:
    """Print every shard's status as one table (launcher.status_table), or as JSON."""
    with Client(args.servers, observer=True, local=False, connect_timeout_s=args.timeout, timeout_s=args.timeout,
                **client_safety.client_kwargs(args)) as client:
        statuses = client.status()
    if args.json:
        print(json.dumps(statuses))
    else:
        print(status_table.render(statuses), end="")
    return 0


COMMANDS: dict[str, Callable] = {"checkpoint": checkpoint, "shutdown": shutdown, "stop": shutdown, "status": status,
                                  "export": export, "move": move, "resize": resize,
                                  "rebalance": rebalance}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (PSError, OSError, ValueError) as exc:
        print(f"ps-admin {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
