"""Tiny LightningModules for the autolog tests and bench, importable by name so that a
saved model unpickles in another process."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset


def make_module(package: Any) -> type:
    """A two-layer regressor on ``package`` (lightning.pytorch or pytorch_lightning)."""

    class TinyRegressor(package.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self, lr: float = 0.05, n: int = 64, batch_size: int = 16) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)
            )
            self.lr = lr
            self.batch_size = batch_size
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(n, 3, generator=g)
            self.y = self.x.sum(dim=1, keepdim=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=self.lr)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(self.x[:16], self.y[:16]), batch_size=16)

    TinyRegressor.__qualname__ = TinyRegressor.__name__ = (
        f"TinyRegressor_{package.__name__.replace('.', '_')}"
    )
    return TinyRegressor


def _package(name: str) -> Any:
    import importlib

    return importlib.import_module(name)


try:
    TinyRegressor_lightning_pytorch = make_module(_package("lightning.pytorch"))
except ImportError:  # pragma: no cover - lightning not installed
    pass
try:
    TinyRegressor_pytorch_lightning = make_module(_package("pytorch_lightning"))
except ImportError:  # pragma: no cover
    pass
