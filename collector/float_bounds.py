"""Bounds on a whole float64 column at C speed, without a float object per value.

A float64's magnitude is in its exponent, whose top 7 bits sit in the low 7 bits of
its last byte (little-endian). One strided copy of those bytes, one ``bytes.translate``
and one ``in`` answer "is every value finite and below 2**k?" for a column of any
length; values the answer cannot vouch for (NaN, infinities, or magnitudes near the
bound) send the caller to its exact check. Ingest runs it on every batch (timestamps'
range, NaN in values) where ``min``/``max``/``sum`` made a float object per value.
"""

from __future__ import annotations

import sys
from array import array
from functools import lru_cache
from typing import Any

_LITTLE = sys.byteorder == "little"


@lru_cache(maxsize=8)
def _table(top: int) -> bytes:
    # Byte -> 1 where its low 7 bits (the exponent's top 7) reach ``top``.
    return bytes(int((b & 0x7F) >= top) for b in range(256))


def below_power_of_two(column: array[Any], power: int) -> bool:
    """True if every value of the float64 ``column`` is finite and of magnitude below
    2**``power`` (``power`` < 1024); False means "maybe not": check exactly.

    Conservative by up to a factor of 2**15 below the bound: the exponent's top 7 bits
    must be below those of the bound's.
    """
    if not _LITTLE or column.typecode != "d" or not 0 < power < 1024:
        return False
    if not column:
        return True
    top = (1023 + power) >> 4  # exponents below top << 4 are below 2**power
    tops = memoryview(column).cast("B")[7::8].tobytes()
    return b"\x01" not in tops.translate(_table(top))
