"""Helpers for tests that run flightlog in other processes."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path


def run_script(
    tmp_path: Path,
    code: str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script file in a fresh interpreter.

    The script lives in its own directory so that sys.path[0] is not a working
    directory holding a ``flightlog`` store.
    """
    d = tmp_path / "scripts"
    d.mkdir(exist_ok=True)
    path = d / f"s{len(list(d.iterdir()))}.py"
    path.write_text(textwrap.dedent(code))
    proc = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=str(cwd or tmp_path),
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def stored_points(db: Path, run_id: str, key: str | None = None) -> int:
    """Points stored for a run (and key), read straight from the SQLite file."""
    conn = sqlite3.connect(db)
    try:
        sql = "SELECT COALESCE(SUM(n), 0) FROM metric_chunks WHERE run_uuid = ?"
        args: tuple[str, ...] = (run_id,)
        if key is not None:
            sql += " AND key = ?"
            args += (key,)
        return int(conn.execute(sql, args).fetchone()[0])
    finally:
        conn.close()


def run_status(db: Path, run_id: str) -> str:
    """A run's status, read straight from the SQLite file."""
    conn = sqlite3.connect(db)
    try:
        return str(
            conn.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()[0]
        )
    finally:
        conn.close()


class Terminal(io.StringIO):
    """A stream that says it is a terminal, so tqdm draws on it."""

    def isatty(self) -> bool:
        return True
