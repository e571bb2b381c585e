"""How the web UI's JSON carries metric values that JSON has no number for.

orjson (like every strict JSON writer) turns NaN, +inf and -inf into ``null``, which
would show an infinite loss as a gap, indistinguishable from NaN. The UI's endpoints
(collector.ui_api) therefore send:

- finite values as JSON numbers;
- NaN as ``null`` (charts draw it as a gap; tables show "NaN");
- +inf and -inf as the strings ``"Infinity"`` and ``"-Infinity"`` (JavaScript's
  ``Number("Infinity")`` reads them back; MLflow's REST API uses the same spelling for
  doubles in protobuf JSON).

The checks cost one C-level ``sum`` per series or run; only values that hold a non-finite
number are rewritten.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

INFINITY = "Infinity"
NEGATIVE_INFINITY = "-Infinity"

JsonFloat = float | str | None


def json_float(value: float) -> JsonFloat:
    """One value as the UI's JSON carries it (see the module docstring)."""
    if math.isfinite(value):
        return value
    if value != value:
        return None
    return INFINITY if value > 0 else NEGATIVE_INFINITY


def json_floats(values: Sequence[float]) -> list[JsonFloat]:
    """A series' values as the UI's JSON carries them."""
    # sum() is finite only when every value is (an overflow to inf merely takes the slow
    # path, which gives the same answer).
    if math.isfinite(sum(values)):
        return values.tolist() if isinstance(values, array) else list(values)
    return [json_float(v) for v in values]


def json_runs(runs: Iterable[dict[str, Any]]) -> None:
    """Rewrite, in place, the non-finite latest metric values of runs (``data.metrics``)."""
    for run in runs:
        metrics = run["data"]["metrics"]
        if metrics and not math.isfinite(sum(metrics.values())):
            run["data"]["metrics"] = {k: json_float(v) for k, v in metrics.items()}
