"""The lr sparkline's data: one point a second whatever the poll rate; edits show at once."""

from __future__ import annotations

from tuiconsole.engine.metrics import LrHistory


def test_one_point_per_period_whatever_the_poll_rate():
    fast, slow = LrHistory(length=5, period=1.0), LrHistory(length=5, period=1.0)
    for i in range(101):  # 10 s of a scheduled lr (= t): read at 10 Hz, and at 1 Hz
        t = i / 10
        fast_view = fast.sample([("g", t)], now=t)
        if i % 10 == 0:
            slow_view = slow.sample([("g", t)], now=t)
    # both hold the last 5 seconds, a point a second
    assert fast_view == slow_view == [(6.0, 7.0, 8.0, 9.0, 10.0)]


def test_an_edit_shows_at_once_and_is_kept_at_the_next_point():
    h = LrHistory(length=4, period=1.0)
    assert h.sample([("g", 0.1)], now=0.0) == [(0.1,)]
    assert h.sample([("g", 0.01)], now=0.3) == [(0.1, 0.01)]  # live, not yet a point
    assert h.sample([("g", 0.01)], now=1.0) == [(0.1, 0.01)]  # now it is one
    assert h.sample([("g", 0.01), ("new", 0.5)], now=1.2) == [(0.1, 0.01), (0.5,)]
