"""``ps-server`` flags for fault tolerance and safety: checkpoints, leases, sync backup
workers, the memory budget, gradient guards, token auth and TLS (docs/failure-semantics.md).

Only the launcher reads argv, files named on it and the environment: the token comes from
``--token-file`` (``PS_TOKEN_FILE``) or the ``PS_TOKEN`` variable and goes into the
:class:`~ps.config.ServerConfig`; it is never printed or logged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ps.protocol.auth import read_token
from ps.checkpoint.files import layouts
from ps.shard.memory_budget import parse_size

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(p) -> None:
    """Add the checkpoint, lease, sync, gradient, auth and TLS flags to a ps-server parser."""
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="write checkpoints here (one sub-directory per checkpoint); also where --restore reads")
    p.add_argument("--checkpoint-every", type=float, default=0.0, metavar="SECONDS",
                   help="also checkpoint this often (0: only on request and when stopping)")
    p.add_argument("--keep-checkpoints", type=int, default=3, metavar="K", help="keep this shard's newest K checkpoints")
    p.add_argument("--restore", action="store_true",
                   help="start from the newest valid checkpoint in --checkpoint-dir; refuse to start when there is "
                        "none (see --allow-empty-restore). Without --shard-index/--num-shards: shard 0 of 1, when "
                        "the directory holds no other shard's checkpoints")
    p.add_argument("--allow-empty-restore", action="store_true",
                   help="with --restore: start with an empty shard when --checkpoint-dir holds no valid checkpoint "
                        "(a first start on an empty volume); off by default, because that resets the model")
    p.add_argument("--restore-tag", default=None, metavar="TAG",
                   help="with --restore: exactly this checkpoint (give every shard the same tag to roll the "
                        "whole cluster back consistently)")
    p.add_argument("--lease", type=float, default=30.0, metavar="SECONDS",
                   help="a worker silent this long (no call, no heartbeat) leaves the quorum; 0: never")
    p.add_argument("--max-workers", type=int, default=4096, metavar="N",
                   help="worker ids a shard keeps track of; registering more is refused (RESOURCE_EXHAUSTED)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="bytes of tables, optimizer state and sparse rows this shard may hold, e.g. 8G or 512M "
                        "(K, M, G, T: powers of 1024); a create beyond it is refused (RESOURCE_EXHAUSTED), sparse "
                        "tables evict (with max_rows) or refuse new rows. Default: half of the machine's memory "
                        "(physical RAM, or the container's limit when lower)")
    p.add_argument("--replicas-to-aggregate", type=int, default=0, metavar="K",
                   help="sync: apply a step once K workers contributed; later gradients for it are stale (0: all)")
    p.add_argument("--clip-norm", type=float, default=0.0,
                   help="scale each pushed block's gradient to L2 norm at most this (0: off)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="require this shared token (also PS_TOKEN) on every call but health checks, "
                        "and on /metrics")
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="serve TLS with this certificate chain")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the private key of --tls-cert")
    p.add_argument("--tls-client-ca", default=None, metavar="PEM",
                   help="mutual TLS: require client certificates signed by this CA")
    p.add_argument("--faults", default="", help="testing only: inject faults, e.g. drop_push_reply_every=3")


def config_fields(args, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """ServerConfig fields from the parsed flags. Raises ValueError (or OSError) for an
    unreadable or empty token file, ValueError for a ``--max-memory`` that is not a size."""
    environ = os.environ if environ is None else environ
    token = read_token(args.token_file) if args.token_file else environ.get("PS_TOKEN", "").strip()
    return dict(
        checkpoint_dir=args.checkpoint_dir or None, checkpoint_every_s=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, restore=args.restore, restore_tag=args.restore_tag or None,
        allow_empty_restore=args.allow_empty_restore,
        lease_s=args.lease, max_workers=args.max_workers,
        max_memory_bytes=parse_size(args.max_memory) if args.max_memory else None,
        replicas_to_aggregate=args.replicas_to_aggregate, clip_norm=args.clip_norm, auth_token=token,
        tls_cert=args.tls_cert or None, tls_key=args.tls_key or None, tls_client_ca=args.tls_client_ca or None,
        faults=args.faults,
    )


def restore_topology(args) -> tuple[int | None, int | None]:
    """``(shard_index, num_shards)`` for the config: the flags' values, or for ``--restore``
    without them ``(0, 1)``, a single server, when ``--checkpoint-dir`` holds no other
    shard's checkpoints. Reads the checkpoint manifests (disk I/O). Raises ValueError
    saying which flags to add when it holds checkpoints of several shards."""
    if not args.restore or args.shard_index is not None or args.num_shards is not None or not args.checkpoint_dir:
        return args.shard_index, args.num_shards
    found = layouts(args.checkpoint_dir)
    counts = sorted({n for _, n in found if n > 1})
    if not counts:
        return 0, 1
    if len(found) == 1:
        (index, count), = found
        add = f"--shard-index {index} --num-shards {count} (the checkpoints there are shard {index} of {count}'s)"
    else:
        add = (f"--shard-index I --num-shards {counts[-1] if len(counts) == 1 else 'N'}, I being this server's "
               "place in the workers' --servers list")
    raise ValueError(f"--restore: {args.checkpoint_dir} holds checkpoints of {' or '.join(map(str, counts))} shards, "
                     f"so which shard this server is must be given: add {add}")


def exposure_warnings(cfg) -> list[str]:
    """What to warn about when binding beyond loopback without auth or TLS."""
    if cfg.host in LOOPBACK:
        return []
    out = []
    if not cfg.auth_token and not cfg.tls_client_ca:
        out.append(f"binding {cfg.host} without authentication: anyone who can reach this port can read and "
                   "change the model, and stop the server (use --token-file or --tls-client-ca)")
    if not cfg.tls_cert:
        out.append(f"binding {cfg.host} without TLS: parameters{' and the token' if cfg.auth_token else ''} "
                   "travel in the clear (use --tls-cert/--tls-key)")
    return out
