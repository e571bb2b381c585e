"""The main job: a small training loop logged into the embedded default store.

Run from anywhere: ``python examples/quickstart.py``. It logs params, step metrics
and tags into ./flightlog (a node-local collector is started on demand), then reads
the run back and prints what was stored and where.
"""

from __future__ import annotations

import math
import random

import flightlog as mlflow


def train(epochs: int = 50, steps_per_epoch: int = 200) -> str:
    """Simulate a training run and return its run id."""
    mlflow.set_experiment("quickstart/toy-regression")
    params = {"learning_rate": 0.01, "batch_size": 32, "epochs": epochs, "optimizer": "adam"}
    with mlflow.start_run(run_name="quickstart") as run:
        mlflow.log_params(params)
        mlflow.set_tags({"model_type": "mlp", "dataset": "synthetic"})
        step = 0
        for epoch in range(epochs):
            for _ in range(steps_per_epoch):
                loss = 2.0 * math.exp(-step / 2000) + random.random() * 0.05
                mlflow.log_metric("train_loss", loss, step=step)
                step += 1
            mlflow.log_metric("val_loss", 2.0 * math.exp(-step / 2200), step=epoch)
            mlflow.log_metric("accuracy", 1 - math.exp(-epoch / 10), step=epoch)
    return run.info.run_id


def main() -> None:
    run_id = train()
    run = mlflow.get_run(run_id)
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run_id, "train_loss")
    print(f"tracking URI : {mlflow.get_tracking_uri()}")
    print(f"store        : {client.ctx.store_path or client.ctx.uri}")
    print(f"run          : {run.info.run_name} ({run_id}) status={run.info.status}")
    print(f"experiment   : {mlflow.get_experiment(run.info.experiment_id).name}")
    print(f"params       : {run.data.params}")
    user_tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    print(f"tags         : {user_tags}")
    print(f"metrics      : { {k: round(v, 4) for k, v in run.data.metrics.items()} }")
    print(
        f"train_loss   : {len(history)} points stored, steps {history[0].step}..{history[-1].step}"
    )
    print(f"artifact URI : {run.info.artifact_uri}")


if __name__ == "__main__":
    main()
