"""Regenerate the Python modules of the .proto contracts: ``python -m protos.generate``.

The generated files are committed so servers start without grpcio-tools; ``--check`` (used by the
tests) fails when they are stale against the .proto sources.
"""
from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) over every .proto into ``out_dir``; return the written files."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    protos = sorted(PROTO_DIR.glob("*.proto"))
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *[str(p.relative_to(ROOT)) for p in protos]]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    # grpcio-tools is pinned in pyproject.toml: its output (and the runtime versions it stamps in) is
    # only reproducible with one release, and the staleness check compares byte for byte.
    return sorted((out_dir / "protos").glob("*_pb2*.py*"))


def stale_files() -> list[str]:
    """Names of generated modules that differ from what the .proto files produce now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        names = {p.name for p in fresh} | {p.name for p in PROTO_DIR.glob("*_pb2*.py*")}
        return sorted(n for n in names
                      if not (PROTO_DIR / n).exists() or not (Path(tmp) / "protos" / n).exists()
                      or not filecmp.cmp(PROTO_DIR / n, Path(tmp) / "protos" / n, shallow=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the generated modules are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale generated modules: {', '.join(stale)}; run: python -m protos.generate", file=sys.stderr)
            return 1
        print("generated modules are current")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            (PROTO_DIR / path.name).write_bytes(path.read_bytes())
            print(f"wrote protos/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
