"""common.heap: a frozen heap is skipped by collections; refreeze releases the cycles retired since."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# run in a child: freezing the pytest process would keep other tests' cycles alive
SCRIPT = r"""
import gc, io, json, weakref
from common import heap
from common.log import Logger

class Node:
    pass

heap.refreeze(Logger("t", stream=io.StringIO()))   # never frozen: a no-op
assert gc.get_freeze_count() == 0
closed = []
a, b = Node(), Node()
a.other, b.other = b, a                              # a cycle, like a retired state
weakref.finalize(a, closed.append, "a")
out = io.StringIO()
heap.freeze(Logger("t", stream=out))
event = json.loads(out.getvalue())
assert event["event"] == "heap_frozen" and event["objects"] > 0 and gc.get_freeze_count() > 0
del a, b
gc.collect()
assert closed == [], "a frozen cycle is not collected"
heap.refreeze(Logger("t", stream=io.StringIO()))
assert closed == ["a"], "refreeze collects the cycles retired since the last freeze"
assert gc.get_freeze_count() > 0
print("ok")
"""


def test_freeze_and_refreeze():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
