"""The C-speed bound the ingest checks use (``collector.float_bounds``)."""

from __future__ import annotations

import math
from array import array

from hypothesis import given
from hypothesis import strategies as st

from flightlog.collector.float_bounds import below_power_of_two


def test_it_vouches_for_ordinary_columns_and_never_for_nan_inf_or_the_bound() -> None:
    assert below_power_of_two(array("d", [1.7e9, -3.0, 0.0, 2.0**-1074]), 49)
    assert below_power_of_two(array("d"), 49)
    for bad in (math.nan, math.inf, -math.inf, 2.0**49, -(2.0**60), 1e300):
        assert not below_power_of_two(array("d", [1.0, bad, 2.0]), 49)
    assert not below_power_of_two(array("d", [math.nan]), 1000)
    assert below_power_of_two(array("d", [1e290, -1e290]), 1000)
    assert not below_power_of_two(array("q", [1, 2]), 49)  # not a float64 column


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True)), st.integers(1, 1023))
def test_true_means_every_value_is_finite_and_below_the_bound(
    values: list[float], power: int
) -> None:
    if below_power_of_two(array("d", values), power):
        assert all(math.isfinite(x) and abs(x) < 2.0**power for x in values)
