"""Images, image histories, tables, and artifact uploads that do not block the caller.

- ``log_image(image, key=..., step=...)`` stores an image history as MLflow 3.x does:
  ``images/<key>+step+<step>+timestamp+<ms>+<uuid>.png`` with a small
  ``...+compressed.webp`` beside it, and the run tag ``mlflow.loggedImages``.
- ``log_table`` stores a table as ``{"columns": [...], "data": [[...]]}`` JSON and lists
  it in the run tag ``mlflow.loggedArtifacts``; ``load_table`` reads such files back.
- Uploads queued with ``submit`` run on a background thread; ``flush`` waits for them
  (``flightlog.flush_artifact_async_logging``) and raises the first failure.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from flightlog.core.exceptions import INVALID_PARAMETER_VALUE, MlflowException

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

LOGGED_IMAGES_TAG = "mlflow.loggedImages"
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
#: The longest side of an image history's thumbnail (MLflow's UI shows these).
THUMBNAIL_SIDE = 256

_pool: ThreadPoolExecutor | None = None
_pending: list[Future[None]] = []  # the uploads flush() has not waited for yet
_lock = threading.Lock()


_KEY = re.compile(r"^[a-zA-Z0-9_\-./ ]+$")


def to_pil(image: Any) -> Any:
    """A PIL image from a PIL image or a numpy array (HxW, HxWx3, HxWx4; uint8 or [0, 1])."""
    try:
        from PIL import Image
    except ImportError:
        raise MlflowException(
            "log_image needs Pillow: pip install 'flightlog[images]'", INVALID_PARAMETER_VALUE
        ) from None
    if isinstance(image, Image.Image):
        return image
    import numpy as np

    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise MlflowException(
            f"An image must be HxW, HxWx1, HxWx3 or HxWx4; got shape {arr.shape}",
            INVALID_PARAMETER_VALUE,
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise MlflowException(
                "Float images must have values in [0, 1]", INVALID_PARAMETER_VALUE
            )
        arr = (arr * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def history_paths(key: str, step: int, timestamp: int) -> tuple[str, str]:
    """The (image, thumbnail) artifact paths of one point of an image history, named as
    MLflow 3.x names them (``+`` separators, ``/`` in the key as ``~``)."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise MlflowException(
            f"Invalid image key {key!r}: it may only contain alphanumerics, underscores (_), "
            "dashes (-), periods (.), spaces ( ) and slashes (/)",
            INVALID_PARAMETER_VALUE,
        )
    sanitized = key.replace("/", "~")
    base = f"images/{sanitized}+step+{int(step)}+timestamp+{int(timestamp)}+{uuid.uuid4()}"
    return f"{base}.png", f"{base}+compressed.webp"


def thumbnail(image: Any) -> Any:
    """A copy no larger than THUMBNAIL_SIDE on its longest side."""
    small = image.copy()
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    if small.mode not in ("RGB", "RGBA", "L"):
        small = small.convert("RGBA")
    return small


def now_ms() -> int:
    return int(time.time() * 1000)


def table_json(data: Any) -> str:
    """A dict of columns or a DataFrame as MLflow's table JSON (``orient="split"``)."""
    import pandas as pd

    if isinstance(data, dict):
        data = pd.DataFrame(data)
    if not isinstance(data, pd.DataFrame):
        raise MlflowException(
            f"log_table takes a dict of columns or a pandas DataFrame, not {type(data).__name__}",
            INVALID_PARAMETER_VALUE,
        )
    return str(data.to_json(orient="split", index=False, date_format="iso"))


def check_table_file(artifact_file: str) -> None:
    if not artifact_file.endswith(".json"):
        raise MlflowException(
            f"Table artifact {artifact_file!r} must be a .json file", INVALID_PARAMETER_VALUE
        )


def logged_tables(tags: dict[str, str]) -> list[dict[str, str]]:
    """The ``mlflow.loggedArtifacts`` entries of a run's tags."""
    try:
        entries = json.loads(tags.get(LOGGED_ARTIFACTS_TAG) or "[]")
    except ValueError:
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def read_table(text: str) -> Any:
    """A DataFrame from MLflow's table JSON."""
    import io

    import pandas as pd

    return pd.read_json(io.StringIO(text), orient="split")


# -- uploads in the background ---------------------------------------------------------------


def submit(fn: Any, *args: Any) -> None:
    """Run ``fn(*args)`` on the artifact thread; ``flush`` waits for it."""
    global _pool
    # Imported here: importing flightlog stays cheap, and a user's script named
    # concurrent.py cannot shadow the package before it is needed.
    from concurrent.futures import ThreadPoolExecutor

    with _lock:
        if _pool is None:
            # One thread: uploads of one process keep their order, and the training loop
            # only pays for encoding the image.
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flightlog-artifacts")
        _pending.append(_pool.submit(fn, *args))


def flush() -> None:
    """Wait for every background upload; raise the first that failed."""
    with _lock:
        pending = list(_pending)
        _pending.clear()
    first: BaseException | None = None
    for f in pending:
        e = f.exception()
        if e is not None and first is None:
            first = e
    if first is not None:
        raise first
