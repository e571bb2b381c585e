"""flightlog.autolog(): every installed framework, patched when it is imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import CollectorProcess

pytest.importorskip("sklearn")

SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    import flightlog
    flightlog.set_tracking_uri(sys.argv[1])
    flightlog.autolog(log_models=False, extra_tags={"via": "autolog"})
    frameworks = ("sklearn", "keras", "lightning", "pytorch_lightning", "tensorflow", "torch")
    imported_early = [m for m in frameworks if m in sys.modules]

    from sklearn.linear_model import LogisticRegression
    LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0]], [0, 1])
    run = flightlog.last_active_run()
    patched = {}
    if importlib.util.find_spec("keras"):
        import keras
        patched["keras"] = getattr(keras.Model.fit, "__flightlog_autolog__", None)
    if importlib.util.find_spec("lightning"):
        import lightning.pytorch
        patched["lightning"] = getattr(lightning.pytorch.Trainer.fit, "__flightlog_autolog__", None)
    print(json.dumps({
        "imported_early": imported_early,
        "tags": run.data.tags,
        "metrics": sorted(run.data.metrics),
        "patched": patched,
    }))
    """
)


def test_autolog_patches_each_framework_on_import(tracking: CollectorProcess) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, tracking.url],
        capture_output=True,
        text=True,
        timeout=240,
        env={**__import__("os").environ, "KERAS_BACKEND": "tensorflow"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["imported_early"] == [], "flightlog.autolog() imported a framework itself"
    assert got["tags"]["estimator_name"] == "LogisticRegression"
    assert got["tags"]["via"] == "autolog"
    assert "training_accuracy_score" in got["metrics"]
    for framework, flavor in (("keras", "tensorflow"), ("lightning", "pytorch")):
        if framework in got["patched"]:
            assert got["patched"][framework] == flavor


def test_import_flightlog_imports_no_framework() -> None:
    code = (
        "import sys, flightlog; flightlog.autolog; flightlog.sklearn; "
        "print([m for m in ('sklearn','keras','tensorflow','torch','lightning','numpy') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
