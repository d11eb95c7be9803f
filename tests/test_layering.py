"""The package graph (docs/ARCHITECTURE.md): serving packages import only downward, offline code sits on top.

Every import counts, the ones inside functions too: a cycle hidden in a function body is still a cycle.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lower first; a package may import only packages before it in this list (and the generated ``recsys``)
SERVING = ["kernels", "common", "feedback", "recall_server", "rank_server", "rerank_server", "gateway"]
# peers of one another: the three stages never import each other
STAGES = {"recall_server", "rank_server", "rerank_server"}
OFFLINE = ["cluster", "export", "tools", "benches"]
PACKAGES = SERVING + OFFLINE


def _modules() -> dict[str, Path]:
    mods = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, ``from a import b`` counted as ``a`` and ``a.b``."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _edges() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {i for i in _imports(p) if i in mods and i != m} for m, p in mods.items()}


def test_serving_packages_import_only_downward():
    bad = []
    for mod, targets in _edges().items():
        top = mod.split(".")[0]
        if top not in SERVING:
            continue
        allowed = set(SERVING[:SERVING.index(top) + 1])
        if top in STAGES:
            allowed -= STAGES - {top}
        bad += [f"{mod} -> {t}" for t in sorted(targets) if t.split(".")[0] not in allowed]
    assert not bad, "imports against the package order:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules_or_packages():
    edges = _edges()
    packages: dict[str, set[str]] = {}
    for mod, targets in edges.items():
        packages.setdefault(mod.split(".")[0], set()).update(t.split(".")[0] for t in targets)
    for graph in (edges, packages):
        cycle = _find_cycle({k: v - {k} for k, v in graph.items()})
        assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}   # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_bench_modules_in_serving_packages():
    found = [str(p.relative_to(ROOT)) for top in SERVING for p in (ROOT / top).rglob("bench*.py")]
    assert not found, found


def test_importing_the_servers_loads_neither_torch_nor_export():
    code = ("import sys\n"
            "import gateway.server, recall_server.server, rank_server.server, rerank_server.server\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{set(OFFLINE) | {'torch'}!r})\n"
            "print(','.join(bad))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"serving imports loaded offline modules: {proc.stdout.strip()}"
