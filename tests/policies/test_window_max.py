"""WindowMax (the HPA stabilization window's sliding maximum) against a brute-force maximum."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowscale.policies.scaling.base import WindowMax


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(0.0, 40.0), st.lists(st.integers(0, 50), min_size=3, max_size=3)), min_size=1, max_size=60
    ),
    window=st.floats(0.0, 120.0),
)
def test_sliding_max_matches_brute_force(steps: list[tuple[float, list[int]]], window: float) -> None:
    w = WindowMax()
    t = 0.0
    kept: list[tuple[float, np.ndarray]] = []
    for gap, vals in steps:
        t += gap
        v = np.array(vals, np.int64)
        before = w
        w = w.expire(t - window).push(t, v)
        kept.append((t, v))
        expect = np.max(np.stack([x for s, x in kept[:-1] if s > t - window] + [v]), axis=0)
        got = w.max()
        assert got is not None
        np.testing.assert_array_equal(got, expect)
        # immutability: the previous value still answers as before
        if before.max() is not None:
            np.testing.assert_array_equal(before.expire(t - window).push(t, v).max(), got)
