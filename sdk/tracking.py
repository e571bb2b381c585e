"""``flightlog.tracking``: where MLflow code looks for ``MlflowClient``."""

from flightlog.client import MlflowClient

__all__ = ["MlflowClient"]
