"""Print the README's table of environment variables from ``flightlog.core.settings.ALL``.

    python scripts/settings_table.py

The README keeps the table by hand (the meaning column may be worded for the page);
tests/test_settings_readme.py checks that it lists exactly these variables with these
defaults.
"""

from __future__ import annotations

from typing import Any

from flightlog.core import settings

_MIB = 1024**2


def default_text(setting: settings.Setting[Any]) -> str:
    """A setting's default as the README writes it."""
    value = setting.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value >= _MIB and value % _MIB == 0:
        return f"{value} ({value // _MIB:,} MiB)"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def variable_text(setting: settings.Setting[Any]) -> str:
    """The variable cell: flightlog's name, then the MLflow names it also answers to."""
    also = "".join(f" (or `{a}`)" for a in setting.aliases)
    return f"`{setting.name}`{also}"


def table() -> str:
    """The Markdown table, one row per setting in declaration order."""
    rows = ["| variable | default | value | read by | meaning |", "|---|---|---|---|---|"]
    for s in settings.ALL:
        cells = (variable_text(s), f"`{default_text(s)}`", s.expects, s.side, s.doc)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
