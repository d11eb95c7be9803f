"""The lock files (requirements/*.txt, written by ``make lock``) pin everything pyproject.toml asks for, and the
Dockerfile installs the serving packages from them."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"serving": [], "export": ["export"], "dev": ["dev"], "bench": ["dev", "bench"], "kuberay": ["kuberay"]}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line):
            pins[_name(m.group(1))] = m.group(2)
    return pins


def _wanted(extras: list[str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names, todo = {_name(r) for r in project["dependencies"]}, list(extras)
    while todo:
        for req in project["optional-dependencies"][todo.pop()]:
            if m := re.match(r"recsys-serving\[(.+)\]", req):
                todo += m.group(1).split(",")
            else:
                names.add(_name(req))
    return names


def test_every_lock_pins_what_pyproject_asks_for_with_hashes():
    for lock, extras in LOCKS.items():
        path = ROOT / "requirements" / f"{lock}.txt"
        pins = _pins(path)
        missing = _wanted(extras) - set(pins)
        assert not missing, f"{path.name} lacks {sorted(missing)}: run `make lock`"
        text = path.read_text()
        assert text.count("==") <= text.count("--hash=sha256:"), f"{path.name}: every pin needs its hashes"
    assert _pins(ROOT / "requirements" / "export.txt")["torch"] == "2.13.0+cpu"


def test_the_dockerfile_installs_from_the_lock_and_copies_every_serving_package():
    from tests.test_layering import SERVING

    text = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements/serving.txt" in text
    assert "-r requirements/export.txt" in text
    copied = set(re.findall(r"^COPY (\w+) \1$", text, flags=re.M))
    assert set(SERVING) <= copied, f"the image lacks {sorted(set(SERVING) - copied)}"
