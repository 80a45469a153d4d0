"""The README's code map names every module of syneg_ray/ and nothing that is not there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _mapped() -> set[str]:
    """Module paths named in the README's Code map table; `pkg/sub/` (`a`, `b`) names pkg/sub/a.py and pkg/sub/b.py."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Code map", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        cell = row.split("|")[1]
        for package, members in re.findall(r"`([\w/]+)/` \(([^)]*)\)", cell):
            names |= {f"{package}/{m}.py" for m in re.findall(r"`(\w+)`", members)}
        cell = re.sub(r"`[\w/]+/` \([^)]*\)", "", cell)
        names |= set(re.findall(r"`([\w/]+\.py)`", cell))
    return names


def test_every_module_has_a_line_and_every_line_a_module():
    modules = {p.relative_to(ROOT / "syneg_ray").as_posix() for p in (ROOT / "syneg_ray").rglob("*.py")}
    modules -= {m for m in modules if m.endswith("__init__.py")}
    mapped = _mapped()
    assert len(mapped) > 40
    assert modules - mapped == set(), "modules without a line in the README's Code map"
    assert mapped - modules == set(), "Code map lines naming no module"
