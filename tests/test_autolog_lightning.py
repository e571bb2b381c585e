"""PyTorch Lightning autologging (both import names) and the PyTorch model flavor."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

import flightlog as mlflow
from flightlog import autologging
from flightlog.core.exceptions import MlflowException
from tests.conftest import CollectorProcess

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")
from tests import lightning_models  # noqa: E402

PACKAGES = ["lightning.pytorch", "pytorch_lightning"]


@pytest.fixture(autouse=True)
def _autolog_off() -> Iterator[None]:
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    yield
    autologging.reset_for_tests()


def _trainer(pl: Any, **kw: Any) -> Any:
    return pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kw,
    )


def _module(name: str) -> tuple[Any, Any]:
    pl = pytest.importorskip(name)
    cls = getattr(lightning_models, f"TinyRegressor_{name.replace('.', '_')}")
    return pl, cls()


@pytest.mark.parametrize("name", PACKAGES)
def test_fit_logs_epoch_metrics_params_summary_and_model(
    tracking: CollectorProcess, name: str
) -> None:
    pl, model = _module(name)
    mlflow.pytorch.autolog()
    stop = pl.callbacks.EarlyStopping(monitor="val_loss", patience=10)
    with mlflow.start_run() as run:
        _trainer(pl, max_epochs=3, callbacks=[stop]).fit(model)
    rid = run.info.run_id
    got = mlflow.get_run(rid)
    p = got.data.params
    assert p["epochs"] == "3" and p["optimizer_name"] == "Adam"
    assert float(p["lr"]) == pytest.approx(0.05)
    assert p["monitor"] == "val_loss" and p["patience"] == "10"
    client = mlflow.MlflowClient()
    for key in ("train_loss", "val_loss"):
        points = client.get_metric_history(rid, key)
        assert [m.step for m in points] == [0, 1, 2], key
    assert got.data.metrics["stopped_epoch"] == 0
    arts = {f.path for f in client.list_artifacts(rid)}
    assert {"model", "model_summary.txt"} <= arts
    x = torch.randn(5, 3)
    with torch.no_grad():
        expected = model(x).numpy()
    loaded = mlflow.pytorch.load_model(f"runs:/{rid}/model")
    with torch.no_grad():
        assert torch.allclose(loaded(x), torch.as_tensor(expected))
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{rid}/model")
    assert pyfunc.predict(x.numpy()) == pytest.approx(expected, rel=1e-5)


def test_without_a_run_fit_gets_one_and_step_logging(tracking: CollectorProcess) -> None:
    pl, model = _module("lightning.pytorch")
    mlflow.pytorch.autolog(log_models=False, log_every_n_step=2)
    _trainer(pl, max_epochs=2, limit_val_batches=0).fit(model)  # 4 batches an epoch
    assert mlflow.active_run() is None
    run = mlflow.last_active_run()
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.autologging"] == "pytorch"
    steps = [
        m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    ]
    # Epoch points at 0 and 1; step points every 2 global steps once train_loss exists
    # (it is logged on_epoch, so from the second epoch: global steps 6 and 8).
    assert sorted(steps) == [0, 1, 6, 8]


def test_registered_model_name_is_refused(tracking: CollectorProcess) -> None:
    with pytest.raises(MlflowException, match="no model registry"):
        mlflow.pytorch.autolog(registered_model_name="m")


def test_pytorch_flavor_round_trip_for_a_plain_module(tmp_path: Any) -> None:
    net = torch.nn.Linear(3, 2)
    mlflow.pytorch.save_model(net, tmp_path / "m")
    x = torch.randn(4, 3)
    with torch.no_grad():
        assert torch.allclose(mlflow.pytorch.load_model(tmp_path / "m")(x), net(x))
    assert "torch==" in (tmp_path / "m" / "requirements.txt").read_text()
    with pytest.raises(MlflowException, match=r"torch\.nn\.Module"):
        mlflow.pytorch.save_model(object(), tmp_path / "n")
