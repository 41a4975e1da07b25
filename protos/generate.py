"""Regenerate the Python stubs in ps/_proto from protos/ps.proto.

Run from anywhere: ``python protos/generate.py`` (needs the ``dev`` extra: grpcio-tools).
The ``-I ps/_proto=protos`` mapping makes protoc write ``from ps._proto import ps_pb2``,
so no import rewriting is needed. ``--check`` exits 1 when the committed stubs differ
from what the .proto generates (CI runs it).
"""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ("ps_pb2.py", "ps_pb2.pyi", "ps_pb2_grpc.py")


def generate(out_root: Path) -> None:
    """Write the stubs under ``out_root/ps/_proto``. Raises RuntimeError if protoc fails."""
    (out_root / "ps" / "_proto").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-Ips/_proto={ROOT / 'protos'}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(ROOT / "protos" / "ps.proto"),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on protos/ps.proto")


def main(argv: list[str]) -> int:
    if "--check" in argv:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            stale = [
                name
                for name in OUTPUTS
                if not (ROOT / "ps" / "_proto" / name).exists()
                or not filecmp.cmp(Path(tmp) / "ps" / "_proto" / name, ROOT / "ps" / "_proto" / name, shallow=False)
            ]
        if stale:
            print(f"stale generated stubs: {', '.join(stale)}; run: python protos/generate.py", file=sys.stderr)
            return 1
        print("generated stubs match protos/ps.proto")
        return 0
    generate(ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
