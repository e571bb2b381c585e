"""Imports run one way and have no side effects.

sdk (``flightlog``) -> agent (``flightlog.agent``) -> core (``flightlog.core``), and
collector (``flightlog.collector``) -> core. The CLI (``flightlog.cli``) may import the
collector inside a function, as an entry point. Importing any package installs no
excepthook, atexit handler, fork hook or signal handler: those come with the first run
or agent.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# directory -> (import prefix, the prefixes it may import at module level)
LAYERS = {
    "core": ("flightlog.core", ("flightlog.core",)),
    "agent": ("flightlog.agent", ("flightlog.agent", "flightlog.core")),
    "collector": ("flightlog.collector", ("flightlog.collector", "flightlog.core")),
    "sdk": ("flightlog", ("flightlog.", "flightlog")),
}


def _flightlog_imports(tree: ast.AST, *, top_level_only: bool) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    nodes = tree.body if top_level_only and isinstance(tree, ast.Module) else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.If):  # TYPE_CHECKING blocks count too
            for sub in ast.walk(node):
                found.extend(_names(sub))
        else:
            found.extend(_names(node))
    return found


def _names(node: ast.AST) -> list[tuple[int, str]]:
    if isinstance(node, ast.Import):
        return [(node.lineno, a.name) for a in node.names if a.name.startswith("flightlog")]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flightlog"):
        if node.module == "flightlog":
            return [(node.lineno, f"flightlog.{a.name}") for a in node.names]
        return [(node.lineno, node.module)]
    return []


def _allowed(directory: str, module: str) -> bool:
    _, allowed = LAYERS[directory]
    if directory == "sdk":
        # The SDK may use the agent and the core, never the collector.
        return not module.startswith("flightlog.collector")
    return any(module == a or module.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("directory", ["core", "agent", "collector", "sdk"])
def test_every_import_follows_the_layers(directory: str) -> None:
    """Every flightlog import anywhere in a module (functions included) respects the layers,
    but for the CLI's entry points, which start the collector."""
    wrong = []
    for path in sorted((ROOT / directory).glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_only = directory == "sdk" and path.name == "cli.py"
        for line, module in _flightlog_imports(tree, top_level_only=top_only):
            if not _allowed(directory, module):
                wrong.append(f"{directory}/{path.name}:{line} imports {module}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


PROBE = r"""
import atexit, json, os, signal, sys
forks = []
real_register = os.register_at_fork
def record_fork(**hooks):
    forks.extend(str(getattr(f, "__module__", "?")) for f in hooks.values())
    return real_register(**hooks)
os.register_at_fork = record_fork
hook, handlers = sys.excepthook, {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
exit_hooks = []
real_atexit = atexit.register
def record_atexit(func, *args, **kwargs):
    exit_hooks.append(str(getattr(func, "__module__", "?")))
    return real_atexit(func, *args, **kwargs)
atexit.register = record_atexit
import importlib, pkgutil
for name in sys.argv[1:]:
    importlib.import_module(name)
    pkg = sys.modules[name]
    for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
        if info.name != "__main__":
            importlib.import_module(f"{name}.{info.name}")
import flightlog
flightlog.log_metric  # the lazy public API loads the whole SDK
print(json.dumps({
    "modules": sorted(m for m in sys.modules if m == "flightlog" or m.startswith("flightlog.")),
    "excepthook_changed": sys.excepthook is not hook,
    "atexit_added": [m for m in exit_hooks if m.startswith("flightlog")],
    "fork_hooks": forks,
    "signals_changed": [int(s) for s, h in handlers.items() if signal.getsignal(s) is not h],
}))
"""


def _probe(*packages: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *packages], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_importing_every_module_has_no_side_effects() -> None:
    seen = _probe("flightlog.core", "flightlog.agent", "flightlog.collector", "flightlog")
    assert "flightlog.fluent" in seen["modules"]  # the probe did load the SDK
    assert not seen["excepthook_changed"]
    assert seen["atexit_added"] == []
    assert [m for m in seen["fork_hooks"] if m.startswith("flightlog")] == []
    assert seen["signals_changed"] == []


LOADED = r"""
import importlib, json, pkgutil, sys
name = sys.argv[1]
pkg = importlib.import_module(name)
for info in pkgutil.iter_modules(pkg.__path__):
    if info.name != "__main__":
        importlib.import_module(f"{name}.{info.name}")
print(json.dumps(sorted(m for m in sys.modules if m.startswith("flightlog"))))
"""


@pytest.mark.parametrize(
    ("package", "may_load"),
    [
        ("flightlog.core", ("flightlog.core",)),
        ("flightlog.agent", ("flightlog.agent", "flightlog.core")),
        ("flightlog.collector", ("flightlog.collector", "flightlog.core")),
    ],
)
def test_a_package_loads_only_its_layers(package: str, may_load: tuple[str, ...]) -> None:
    """In a fresh interpreter, importing all of a package loads nothing of the layers above
    it (``flightlog`` itself is the namespace's root package, which loads nothing)."""
    out = subprocess.run(
        [sys.executable, "-c", LOADED, package], capture_output=True, text=True, check=True
    )
    loaded = json.loads(out.stdout)
    above = [
        m
        for m in loaded
        if m != "flightlog" and not any(m == p or m.startswith(p + ".") for p in may_load)
    ]
    assert above == [], f"importing {package} loaded {above}"


def test_import_flightlog_is_cheap() -> None:
    """``import flightlog`` defers the SDK until a name is used (imports nothing heavy)."""
    code = (
        "import sys, flightlog; print(sorted(m for m in sys.modules if m.startswith('flightlog')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(["flightlog", "flightlog.core", "flightlog.core.version"])


def test_a_training_process_loads_no_event_loop_or_server() -> None:
    """Logging a metric loads the SDK and the agent, but neither asyncio nor aiohttp (the
    collector's): the training process pays for neither, and a user's own module named
    like one of asyncio's (concurrent.py, say) does not break it."""
    code = (
        "import sys, flightlog\n"
        "flightlog.set_tracking_uri('http://127.0.0.1:9')\n"
        "from flightlog.fluent import log_metric\n"
        "import flightlog.agent.worker, flightlog.agent.ring\n"
        "print(sorted(m for m in ('asyncio', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
