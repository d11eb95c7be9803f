"""Regenerate the Python modules of the .proto contracts: ``python -m protos.generate``.

Sources: the buf module under ``protos/`` (``recsys/v2/``: the public API; ``recsys/stage/v1/``: the stage
contracts) and the deprecated ``protos/legacy/recsys/v1/`` (outside the buf module, see ``protos/buf.yaml``).
Each file is compiled relative to its own root, so it registers under its import path (e.g.
``recsys/v2/recommend_service.proto``) and its module lands in the top-level ``recsys`` package at the
repository root (``recsys.v2.recommend_service_pb2``). The generated files are committed so servers start
without grpcio-tools; ``--check`` (used by the tests) fails when they are stale against the sources.
"""
from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
ROOT = PROTO_DIR.parent
LEGACY_DIR = PROTO_DIR / "legacy"
OUT_PACKAGE = "recsys"  # generated modules: ROOT / recsys / ...


def sources() -> list[tuple[Path, list[Path]]]:
    """(include root, .proto files under it) for the buf module and the legacy tree."""
    module = sorted(p for p in (PROTO_DIR / OUT_PACKAGE).rglob("*.proto"))
    legacy = sorted(p for p in (LEGACY_DIR / OUT_PACKAGE).rglob("*.proto"))
    return [(PROTO_DIR, module), (LEGACY_DIR, legacy)]


def generated_files(out_dir: Path) -> list[Path]:
    """Generated modules under ``out_dir``, relative to it."""
    return sorted(p.relative_to(out_dir) for p in (out_dir / OUT_PACKAGE).rglob("*_pb2*.py*"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) over every .proto into ``out_dir``; return the written files (relative)."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    include = Path(protoc.__file__).resolve().parent / "_proto"
    for root, protos in sources():
        args = ["protoc", f"-I{root}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
                f"--grpc_python_out={out_dir}", *[str(p.relative_to(root)) for p in protos]]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
    # grpcio-tools is pinned in pyproject.toml: its output (and the runtime versions it stamps in) is
    # only reproducible with one release, and the staleness check compares byte for byte.
    return generated_files(out_dir)


def stale_files() -> list[str]:
    """Names of generated modules that differ from what the .proto files produce now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = set(generate(Path(tmp)))
        names = fresh | set(generated_files(ROOT))
        return sorted(str(n) for n in names
                      if not (ROOT / n).exists() or not (Path(tmp) / n).exists()
                      or not filecmp.cmp(ROOT / n, Path(tmp) / n, shallow=False))


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
            (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
            (ROOT / path).write_bytes((Path(tmp) / path).read_bytes())
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
