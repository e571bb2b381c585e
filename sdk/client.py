"""MlflowClient: the explicit-id tier of the API.

Writes go through the process's agent (queued, batched, acknowledged after commit);
reads flush that agent first, so a read sees everything this process logged before
it, as with MLflow's synchronous client.
"""

from __future__ import annotations

import gc
import getpass
import json
import os
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from flightlog import artifacts, media, search
from flightlog.context import TrackingContext, get_context
from flightlog.core import settings
from flightlog.core import validation as v
from flightlog.core.artifact_paths import proxied_artifact_uri
from flightlog.core.entities import (
    Experiment,
    FileInfo,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunStatus,
    RunTag,
    ViewType,
)
from flightlog.core.exceptions import (
    INVALID_PARAMETER_VALUE,
    INVALID_STATE,
    RESOURCE_DOES_NOT_EXIST,
    CollectorUnavailable,
    MlflowException,
    RestException,
)
from flightlog.core.run_names import generate_run_name


def _dataset_fields(dataset: Any) -> dict[str, str]:
    """The REST fields of a dataset entity (flightlog's or mlflow's)."""
    out = {}
    for name in ("name", "digest", "source_type", "source", "schema", "profile"):
        value = getattr(dataset, name, None)
        if value is not None:
            out[name] = value
    return out


def _user() -> str:
    try:
        return settings.USER.get() or getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def _metrics(run_id: str, key: str, chunks: Sequence[Sequence[bytes]]) -> list[Metric]:
    steps, vals, ts = array("q"), array("d"), array("d")
    for s, val, t in chunks:
        steps.frombytes(s)
        vals.frombytes(val)
        ts.frombytes(t)
    # Building a million objects triggers the cyclic collector over and over for objects
    # that cannot form cycles; pausing it makes a 1M-point read ~3x faster here.
    paused = gc.isenabled()
    gc.disable()
    try:
        return [
            Metric(key, x, round(t * 1000), s, run_id)
            for s, x, t in zip(steps, vals, ts, strict=True)
        ]
    finally:
        if paused:
            gc.enable()


class MlflowClient:
    """Explicit client: every call names its run or experiment.

    ``MlflowClient(tracking_uri)`` talks to that URI; with none, to the tracking URI
    in force (``flightlog.set_tracking_uri`` / ``FLIGHTLOG_TRACKING_URI`` / ./flightlog).
    """

    def __init__(self, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        if registry_uri is not None:
            # Accepting it silently would let registry calls appear to work elsewhere.
            raise MlflowException(
                f"registry_uri={registry_uri!r}: flightlog has no model registry; "
                "create the client without registry_uri (use MLflow for the registry).",
                INVALID_PARAMETER_VALUE,
            )
        self._uri = tracking_uri
        self._ctx: TrackingContext | None = None

    @property
    def ctx(self) -> TrackingContext:
        """The connection for this client's tracking URI (started on first use)."""
        if self._ctx is None:
            self._ctx = get_context(self._uri)
        return self._ctx

    @property
    def _reading(self) -> TrackingContext:
        """The connection for a read: reading a local store that does not exist fails
        saying so, and creates neither the store nor a collector."""
        if self._ctx is None:
            self._ctx = get_context(self._uri, create=False)
        return self._ctx

    @property
    def tracking_uri(self) -> str:
        return self.ctx.uri

    def _call(self, method: str, **args: Any) -> Any:
        return self.ctx.client.call(method, **args)

    def _read(self, method: str, **args: Any) -> Any:
        # Reads see everything this process logged before them.
        self._reading.agent.flush()
        return self._call(method, **args)

    # -- experiments ----------------------------------------------------------------------

    def create_experiment(
        self, name: str, artifact_location: str | None = None, tags: dict[str, Any] | None = None
    ) -> str:
        """Create an experiment and return its id."""
        v.validate_experiment_name(name)
        clean = {v.validate_key("tag", k): v.tag_value(k, val) for k, val in (tags or {}).items()}
        reply = self._call(
            "create_experiment", name=name, artifact_location=artifact_location, tags=clean
        )
        return str(reply["experiment_id"])

    def get_experiment(self, experiment_id: str) -> Experiment:
        """An experiment by id; raises RESOURCE_DOES_NOT_EXIST if there is none."""
        exp = Experiment.from_dict(self._call("get_experiment", experiment_id=str(experiment_id)))
        self.ctx.experiments[exp.experiment_id] = exp
        return exp

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        """An experiment by name, or None."""
        d = self._call("get_experiment_by_name", name=name)
        if d is None:
            return None
        exp = Experiment.from_dict(d)
        self.ctx.experiments[exp.experiment_id] = exp
        return exp

    def delete_experiment(self, experiment_id: str) -> None:
        """Mark an experiment and its runs deleted."""
        self.ctx.agent.flush()
        self._call("delete_experiment", experiment_id=str(experiment_id))
        self.ctx.experiments.pop(str(experiment_id), None)

    def restore_experiment(self, experiment_id: str) -> None:
        """Restore a deleted experiment and its runs."""
        self._call("restore_experiment", experiment_id=str(experiment_id))

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        """Rename an experiment."""
        v.validate_experiment_name(new_name)
        self._call("rename_experiment", experiment_id=str(experiment_id), new_name=new_name)

    def set_experiment_tag(self, experiment_id: str, key: str, value: Any) -> None:
        """Set a tag on an experiment."""
        v.validate_key("tag", key)
        self._call(
            "set_experiment_tag",
            experiment_id=str(experiment_id),
            key=key,
            value=v.tag_value(key, value),
        )

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        """Delete a tag of an experiment."""
        self._call("delete_experiment_tag", experiment_id=str(experiment_id), key=key)

    def _active_experiment(self, experiment_id: str) -> Experiment:
        exp = self.ctx.experiments.get(str(experiment_id))
        if exp is None:
            try:
                exp = self.get_experiment(str(experiment_id))
            except RestException as e:
                if not isinstance(e.__cause__, CollectorUnavailable):
                    raise
                # Offline: the run is created when the collector is back (the agent
                # spools it), which checks the experiment then. Its artifact location
                # is unknown until then.
                return Experiment(str(experiment_id), name="", artifact_location="")
        if exp.lifecycle_stage != "active":
            raise MlflowException(
                f"The experiment {experiment_id} must be in the 'active' state. "
                f"Current state is {exp.lifecycle_stage}.",
                INVALID_STATE,
            )
        return exp

    # -- runs -----------------------------------------------------------------------------

    def create_run(
        self,
        experiment_id: str,
        start_time: int | None = None,
        tags: dict[str, Any] | None = None,
        run_name: str | None = None,
    ) -> Run:
        """Create a RUNNING run; the id is made here, so this does not wait for the collector."""
        exp = self._active_experiment(str(experiment_id))
        clean = {v.validate_key("tag", k): v.tag_value(k, val) for k, val in (tags or {}).items()}
        if run_name is None:
            run_name = clean.get("mlflow.runName") or generate_run_name()
        if len(run_name) > v.MAX_RUN_NAME_LENGTH:
            raise MlflowException(
                f"Run name is {len(run_name)} characters long; the limit is "
                f"{v.MAX_RUN_NAME_LENGTH}.",
                INVALID_PARAMETER_VALUE,
            )
        clean["mlflow.runName"] = run_name
        user = _user()
        clean.setdefault("mlflow.user", user)
        clean.setdefault(
            "mlflow.source.name",
            os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "<console>",
        )
        clean.setdefault("mlflow.source.type", "LOCAL")
        run_id = uuid.uuid4().hex
        start = int(start_time if start_time is not None else time.time() * 1000)
        self.ctx.agent.submit_op(
            "create_run",
            {
                "run_id": run_id,
                "experiment_id": exp.experiment_id,
                "run_name": run_name,
                "user_id": user,
                "start_time": start,
                "tags": clean,
            },
        )
        info = RunInfo(
            run_id=run_id,
            experiment_id=exp.experiment_id,
            run_name=run_name,
            user_id=user,
            status=RunStatus.RUNNING,
            start_time=start,
            end_time=None,
            artifact_uri=f"{exp.artifact_location}/{run_id}/artifacts",
        )
        return self._as_seen(Run(info=info, data=RunData(tags=dict(clean))))

    def get_run(self, run_id: str) -> Run:
        """A run with its params, tags and the latest value of each metric."""
        return self._as_seen(Run.from_dict(self._read("get_run", run_id=run_id)))

    def _as_seen(self, run: Run) -> Run:
        """The run with the artifact URI every client of this tracking URI sees.

        Over HTTP that is the collector's proxy URI (``mlflow-artifacts:/...``), as the
        MLflow client reports it, not a path on the collector's machine; a local store's
        runs keep their local location, which is meaningful here.
        """
        if self.ctx.local is None:
            info = run.info
            info.artifact_uri = proxied_artifact_uri(
                info.experiment_id, info.run_id, info.artifact_uri
            )
        return run

    def update_run(self, run_id: str, status: str | None = None, name: str | None = None) -> None:
        """Change a run's status and/or name."""
        if status is not None and status not in RunStatus.ALL:
            raise MlflowException(
                f"Invalid run status {status!r}; use one of {', '.join(RunStatus.ALL)}",
                INVALID_PARAMETER_VALUE,
            )
        self.ctx.agent.submit_op(
            "update_run", {"run_id": run_id, "status": status, "run_name": name}
        )

    def set_terminated(
        self, run_id: str, status: str | None = None, end_time: int | None = None
    ) -> None:
        """End a run (FINISHED unless told otherwise) and wait until that is stored."""
        status = status or RunStatus.FINISHED
        if status not in RunStatus.ALL:
            raise MlflowException(f"Invalid run status {status!r}", INVALID_PARAMETER_VALUE)
        self.ctx.agent.submit_op(
            "update_run",
            {
                "run_id": run_id,
                "status": status,
                "end_time": int(end_time if end_time is not None else time.time() * 1000),
            },
        )
        self.ctx.agent.flush(tell_outage=False)

    def delete_run(self, run_id: str) -> None:
        """Mark a run deleted."""
        self.ctx.agent.flush()
        self._call("delete_run", run_id=run_id)

    def restore_run(self, run_id: str) -> None:
        """Restore a deleted run."""
        self._call("restore_run", run_id=run_id)

    # -- logging ---------------------------------------------------------------------------

    def log_metric(
        self,
        run_id: str,
        key: str,
        value: float,
        timestamp: int | None = None,
        step: int | None = None,
        synchronous: bool | None = None,
    ) -> None:
        """Log one metric point (queued; durable after flush/end of run)."""
        v.validate_metric_key(key)
        value = v.metric_value(key, value)
        s = 0 if step is None else v.metric_step(key, step)
        ts = time.time() if timestamp is None else v.metric_timestamp(key, timestamp)
        self.ctx.agent.submit_metric((run_id, key, value, s, ts))
        if synchronous:
            self.ctx.agent.flush()

    def log_param(self, run_id: str, key: str, value: Any, synchronous: bool | None = None) -> Any:
        """Log a param; a different value for a param already logged is an error."""
        self.log_batch(run_id, params=[Param(key, value)], synchronous=synchronous)
        return value

    def set_tag(self, run_id: str, key: str, value: Any, synchronous: bool | None = None) -> None:
        """Set (upsert) a run tag."""
        self.log_batch(run_id, tags=[RunTag(key, value)], synchronous=synchronous)

    def delete_tag(self, run_id: str, key: str) -> None:
        """Delete a run tag; a missing tag is reported as RESOURCE_DOES_NOT_EXIST."""
        self.ctx.agent.submit_op("delete_tag", {"run_id": run_id, "key": key})
        self.ctx.agent.flush()

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
        synchronous: bool | None = None,
    ) -> None:
        """Log metrics, params and tags together."""
        if params:
            clean = {v.validate_key("param", p.key): v.param_value(p.key, p.value) for p in params}
            self._check_params(run_id, clean)
            self.ctx.agent.submit_op("log_params", {"run_id": run_id, "params": clean})
        if tags:
            self.ctx.agent.submit_op(
                "set_tags",
                {
                    "run_id": run_id,
                    "tags": {
                        v.validate_key("tag", t.key): v.tag_value(t.key, t.value) for t in tags
                    },
                },
            )
        for m in metrics:
            self.log_metric(run_id, m.key, m.value, m.timestamp, m.step)
        if synchronous:
            self.ctx.agent.flush()

    def _check_params(self, run_id: str, params: dict[str, str]) -> None:
        # The SDK knows what this process logged, so a changed value fails at the call
        # site; values logged by other processes are checked by the collector.
        seen = self.ctx.params.setdefault(run_id, {})
        for k, val in params.items():
            old = seen.get(k)
            if old is not None and old != val:
                raise MlflowException(
                    f"Changing param values is not allowed. Param with key={k!r} was already "
                    f"logged with value={old!r} for run ID={run_id!r}. Attempted logging new "
                    f"value {val!r}.",
                    INVALID_PARAMETER_VALUE,
                )
        seen.update(params)

    # -- metric history -------------------------------------------------------------------

    def get_metric_history(
        self, run_id: str, key: str, max_points: int | None = None
    ) -> list[Metric]:
        """Every point of a metric, in the order logged.

        With ``max_points``, a chart-sized read instead: at most that many points, keeping
        each step bucket's min, max and last value (see ``get_metric_histories``).
        """
        if max_points is not None:
            series = self.get_metric_histories([run_id], [key], max_points)
            return series.get(run_id, {}).get(key, [])
        reply = self._read("get_metric_history", run_id=run_id, key=key)
        return _metrics(run_id, key, reply["chunks"])

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything this process logged is durable."""
        self.ctx.agent.flush(timeout)

    # -- artifacts ------------------------------------------------------------------------

    def log_artifact(
        self, run_id: str, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Upload one local file into the run's artifacts (under ``artifact_path``)."""
        local = Path(local_path)
        if not local.is_file():
            raise MlflowException(
                f"No such file to log as an artifact: {local}", INVALID_PARAMETER_VALUE
            )
        rel = artifacts.join_artifact_path(artifact_path, local.name)
        self.ctx.agent.flush()  # the run must exist at the collector
        artifacts.upload_file(self.ctx.client, run_id, local, rel)

    def log_artifacts(
        self, run_id: str, local_dir: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Upload a directory tree into the run's artifacts (under ``artifact_path``)."""
        root = Path(local_dir)
        if not root.is_dir():
            raise MlflowException(
                f"No such directory to log as artifacts: {root}", INVALID_PARAMETER_VALUE
            )
        files = artifacts.files_to_upload(root)  # refuses escaping symlinks before any upload
        planned = [(p, artifacts.join_artifact_path(artifact_path, rel)) for p, rel in files]
        self.ctx.agent.flush()
        for p, rel in planned:
            artifacts.upload_file(self.ctx.client, run_id, p, rel)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Store ``text`` as the artifact file ``artifact_file`` (UTF-8)."""
        self._log_bytes(run_id, text.encode("utf-8"), artifact_file)

    def log_dict(self, run_id: str, dictionary: Any, artifact_file: str) -> None:
        """Store a dict as JSON, or as YAML when ``artifact_file`` ends in .yml/.yaml."""
        if artifact_file.endswith((".yml", ".yaml")):
            try:
                import yaml
            except ImportError:
                raise MlflowException(
                    "log_dict to a .yaml file needs PyYAML: pip install 'flightlog[yaml]'"
                ) from None
            text = yaml.safe_dump(dictionary, default_flow_style=False, sort_keys=False)
        else:
            text = json.dumps(dictionary, indent=2, default=str)
        self.log_text(run_id, text, artifact_file)

    def log_figure(
        self,
        run_id: str,
        figure: Any,
        artifact_file: str,
        *,
        save_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Store a matplotlib (or plotly, via write_image) figure as an image file."""
        suffix = Path(artifact_file).suffix or ".png"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"figure{suffix}"
            if hasattr(figure, "savefig"):
                figure.savefig(path, **(save_kwargs or {}))
            elif hasattr(figure, "write_image"):
                figure.write_image(str(path), **(save_kwargs or {}))
            else:
                raise MlflowException(
                    f"Unsupported figure type {type(figure).__name__}: "
                    "expected a matplotlib or plotly figure",
                    INVALID_PARAMETER_VALUE,
                )
            self._log_file_as(run_id, path, artifact_file)

    def log_image(
        self,
        run_id: str,
        image: Any,
        artifact_file: str | None = None,
        key: str | None = None,
        step: int | None = None,
        timestamp: int | None = None,
        synchronous: bool | None = None,
    ) -> None:
        """Store a numpy array (HxW, HxWx3, HxWx4; uint8 or floats in [0, 1]) or PIL image.

        Either as the file ``artifact_file``, or, with ``key`` (and ``step``), as one
        point of an image history, as MLflow 2.x stores it (see ``flightlog.media``).
        A history point uploads in the background unless ``synchronous``;
        ``flush_artifact_async_logging()`` (and the end of the run) waits for it.
        """
        if (artifact_file is None) == (key is None):
            raise MlflowException(
                "log_image takes either artifact_file, or key (with step)",
                INVALID_PARAMETER_VALUE,
            )
        pil = media.to_pil(image)
        if artifact_file is not None:
            if step is not None or timestamp is not None:
                raise MlflowException(
                    "step and timestamp go with key, not artifact_file", INVALID_PARAMETER_VALUE
                )
            self._log_pil(run_id, pil, artifact_file)
            return
        assert key is not None
        ts = timestamp if timestamp is not None else media.now_ms()
        full, small = media.history_paths(key, step or 0, ts)
        thumb = media.thumbnail(pil)  # before returning: the caller may change the image
        self.ctx.agent.flush()  # the run must exist at the collector
        if synchronous:
            self._log_pil(run_id, pil, full)
            self._log_pil(run_id, thumb, small)
        else:
            media.submit(self._log_pil, run_id, pil.copy(), full)
            media.submit(self._log_pil, run_id, thumb, small)
        self.set_tag(run_id, media.LOGGED_IMAGES_TAG, "true")

    def _log_pil(self, run_id: str, image: Any, artifact_file: str) -> None:
        suffix = Path(artifact_file).suffix or ".png"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"image{suffix}"
            image.save(path)
            self._log_file_as(run_id, path, artifact_file)

    def flush_artifact_async_logging(self) -> None:
        """Wait for the artifacts uploading in the background (image histories)."""
        media.flush()

    def log_table(self, run_id: str, data: Any, artifact_file: str) -> None:
        """Store a table (dict of columns or DataFrame) as JSON, listed for ``load_table``."""
        media.check_table_file(artifact_file)
        self.log_text(run_id, media.table_json(data), artifact_file)
        tags = self.get_run(run_id).data.tags
        entries = media.logged_tables(tags)
        entry = {"path": artifact_file, "type": "table"}
        if entry not in entries:
            self.set_tag(run_id, media.LOGGED_ARTIFACTS_TAG, json.dumps([*entries, entry]))

    def load_table(
        self,
        experiment_id: str,
        artifact_file: str,
        run_ids: list[str] | None = None,
        extra_columns: list[str] | None = None,
    ) -> Any:
        """One DataFrame of the table ``artifact_file`` of every run of the experiment
        that logged it (or of ``run_ids``); ``extra_columns`` adds run attributes such
        as ``run_id``."""
        import pandas as pd

        if run_ids is not None:
            runs = [self.get_run(r) for r in run_ids]
        else:
            runs, token = [], None
            while True:
                page = self.search_runs([str(experiment_id)], page_token=token)
                runs += page
                token = page.token
                if not token:
                    break
        frames = []
        for run in runs:
            if not any(e.get("path") == artifact_file for e in media.logged_tables(run.data.tags)):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                local = self.download_artifacts(run.info.run_id, artifact_file, tmp)
                df = media.read_table(Path(local).read_text())
            for col in extra_columns or []:
                value = getattr(run.info, col, None)
                if value is None:
                    raise MlflowException(
                        f"extra column {col!r} is not a run attribute", INVALID_PARAMETER_VALUE
                    )
                df[col] = value
            frames.append(df)
        if not frames:
            raise MlflowException(
                f"No runs found with the table artifact {artifact_file!r}",
                RESOURCE_DOES_NOT_EXIST,
            )
        return pd.concat(frames, ignore_index=True)

    # -- datasets and lineage -------------------------------------------------------------

    def log_inputs(
        self,
        run_id: str,
        datasets: Sequence[Any] | None = None,
        models: Sequence[Any] | None = None,
    ) -> None:
        """Record dataset inputs (``DatasetInput``: a dataset and its tags) of a run.

        Sent to the collector's MLflow REST endpoint (``runs/log-inputs``), as MLflow's
        client sends them. Logged models are not tracked (see the README's table).
        """
        if models:
            raise MlflowException(
                "flightlog does not track logged models; log_inputs takes datasets only",
                INVALID_PARAMETER_VALUE,
            )
        items = [
            {
                "dataset": _dataset_fields(d.dataset),
                "tags": [{"key": t.key, "value": t.value} for t in d.tags or []],
            }
            for d in datasets or []
        ]
        if not items:
            return
        self.ctx.agent.flush()  # the run must exist at the collector
        self._rest("POST", "runs/log-inputs", {"run_id": run_id, "datasets": items})

    def _rest(self, method: str, endpoint: str, body: dict[str, Any]) -> Any:
        """One call to the collector's MLflow REST API (JSON), its error raised."""
        try:
            status, _, data = self.ctx.client.request(
                method,
                f"/api/2.0/mlflow/{endpoint}",
                orjson.dumps(body),
                content_type="application/json",
                headers={"Accept": "application/json"},
            )
        except CollectorUnavailable as e:
            raise RestException(str(e), "INTERNAL_ERROR", 503) from e
        try:
            reply = orjson.loads(data) if data else {}
        except ValueError:
            reply = {"message": data[:300].decode("utf-8", "replace")}
        if status >= 400:
            raise RestException(
                str(reply.get("message", f"HTTP {status}")),
                str(reply.get("error_code", "INTERNAL_ERROR")),
                status,
            )
        return reply

    def get_parent_run(self, run_id: str) -> Run | None:
        """The parent of a nested run (its ``mlflow.parentRunId`` tag), or None."""
        parent = self.get_run(run_id).data.tags.get("mlflow.parentRunId")
        return self.get_run(parent) if parent else None

    def set_experiment_tags(self, experiment_id: str, tags: dict[str, Any]) -> None:
        """Set several tags on an experiment."""
        for key, value in tags.items():
            self.set_experiment_tag(experiment_id, key, value)

    def _log_bytes(self, run_id: str, data: bytes, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "data"
            path.write_bytes(data)
            self._log_file_as(run_id, path, artifact_file)

    def _log_file_as(self, run_id: str, path: Path, artifact_file: str) -> None:
        rel = artifacts.join_artifact_path(None, artifact_file)
        self.ctx.agent.flush()
        artifacts.upload_file(self.ctx.client, run_id, path, rel)

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[FileInfo]:
        """The direct children of ``path`` (the root when None) in a run's artifacts."""
        self._reading.agent.flush()
        return artifacts.list_artifacts(self.ctx.client, run_id, path)

    def download_artifacts(self, run_id: str, path: str, dst_path: str | None = None) -> str:
        """Download a file or directory of a run's artifacts; return its local path."""
        self._reading.agent.flush()
        return artifacts.download(self.ctx.client, run_id, path, dst_path)

    # -- search ---------------------------------------------------------------------------

    def search_runs(
        self,
        experiment_ids: list[str] | str,
        filter_string: str = "",
        run_view_type: int | str = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        order_by: list[str] | None = None,
        page_token: str | None = None,
    ) -> search.PagedList[Run]:
        """One page of runs matching ``filter_string``; ``.token`` fetches the next page."""
        ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
        reply = self._read(
            "search_runs",
            experiment_ids=[str(i) for i in ids],
            filter_string=filter_string or "",
            run_view_type=search.view(run_view_type),
            max_results=max_results,
            order_by=list(order_by or []),
            page_token=page_token,
        )
        return search.PagedList(
            [self._as_seen(Run.from_dict(r)) for r in reply["runs"]], reply["next_page_token"]
        )

    def search_experiments(
        self,
        view_type: int | str = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        filter_string: str | None = None,
        order_by: list[str] | None = None,
        page_token: str | None = None,
    ) -> search.PagedList[Experiment]:
        """One page of experiments matching ``filter_string``; ``.token`` for the next."""
        reply = self._read(
            "search_experiments",
            view_type=search.view(view_type),
            max_results=max_results,
            filter_string=filter_string or "",
            order_by=list(order_by or []),
            page_token=page_token,
        )
        return search.PagedList(
            [Experiment.from_dict(e) for e in reply["experiments"]], reply["next_page_token"]
        )

    def get_metric_histories(
        self, run_ids: Sequence[str], keys: Sequence[str], max_points: int
    ) -> dict[str, dict[str, list[Metric]]]:
        """Downsampled histories for charts: for every run and key, at most ``max_points``
        points that keep each bucket's min, max and last value (so spikes survive)."""
        reply = self._read(
            "get_metric_histories", run_ids=list(run_ids), keys=list(keys), max_points=max_points
        )
        out: dict[str, dict[str, list[Metric]]] = {}
        for run_id, key, s, val, t in reply["series"]:
            out.setdefault(run_id, {})[key] = _metrics(run_id, key, [(s, val, t)])
        return out
