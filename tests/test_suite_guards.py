"""The suite itself: missing data fails it (never a green run of skips), and a hung test fails fast."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pytest(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "RECSYS_TEST_SNAPSHOT"}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300)


def test_missing_data_fails_the_suite_instead_of_skipping(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    proc = _pytest(["tests/test_fuzz.py::test_fuzz_recall"], tmp_path, RECSYS_DATA_DIR=str(empty))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "skipped" not in out and "ML-100K is not available" in out, out


def test_a_hung_test_fails_on_the_per_test_timeout(tmp_path):
    hung = tmp_path / "test_hangs.py"
    hung.write_text("import time\n\ndef test_hangs():\n    time.sleep(600)\n")
    proc = _pytest([str(hung), "--timeout", "2", "--rootdir", str(tmp_path), "-c", str(ROOT / "pyproject.toml")],
                   tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Timeout" in out, out
