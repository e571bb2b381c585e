"""The README's table of environment variables lists exactly ``flightlog.core.settings.ALL``."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from flightlog.core import settings

ROOT = Path(__file__).resolve().parent.parent


def _table_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "settings_table", ROOT / "scripts" / "settings_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _readme_rows() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            name = re.match(r"`([A-Z0-9_]+)`", cells[0])
            assert name, line
            assert name.group(1) not in rows, f"{name.group(1)} listed twice"
            rows[name.group(1)] = cells
    return rows


def test_readme_table_lists_every_setting_with_its_default() -> None:
    table = _table_script()
    rows = _readme_rows()
    assert list(rows) == [s.name for s in settings.ALL]
    for s in settings.ALL:
        variable, default, value, side, meaning = rows[s.name]
        assert variable == table.variable_text(s), s.name
        assert default == f"`{table.default_text(s)}`", s.name
        assert value == s.expects and side == s.side, s.name
        assert meaning, f"{s.name} has no meaning in the README"


def test_readme_names_no_variable_that_is_not_a_setting() -> None:
    text = (ROOT / "README.md").read_text()
    known = {s.name for s in settings.ALL}
    mentioned = set(re.findall(r"\bFLIGHTLOG_[A-Z0-9_]+\b", text))
    assert mentioned <= known, sorted(mentioned - known)
