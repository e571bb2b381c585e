"""Progress bars for long transfers (artifact downloads, ``flightlog sync``): tqdm, built
in this one place, drawn on stderr only when it is a terminal."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm


def progress_bar(
    total: float, desc: str, *, unit: str = "B", file: TextIO | None = None
) -> tqdm[Any]:
    """A bar counting to ``total`` ``unit``s (bytes scale to kB/MB/GB).

    ``disable=None``: nothing is drawn when ``file`` (stderr by default) is not a
    terminal, so logs and pipes stay clean.
    """
    from tqdm import tqdm  # lazily: `import flightlog` stays fast

    scaled = unit == "B"
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=scaled,
        unit_divisor=1024 if scaled else 1000,
        file=file if file is not None else sys.stderr,
        disable=None,
        leave=True,
        mininterval=0.1,
        dynamic_ncols=True,
    )
