"""miyaq.worker.transit: how late a node's stamped message came, against the
quickest recent one, on two clocks with another base and another rate."""
from __future__ import annotations

import math

from miyaq.worker.transit import WINDOW, Transit


def test_a_message_s_lag_is_how_much_later_it_came_than_the_quickest():
    transit = Transit()
    base = 5_000.0          # the node's clock minus ours
    assert transit.lag(100.0 + base, 100.001) == 0.0           # the first: the quickest yet
    assert math.isclose(transit.lag(100.5 + base, 100.503), 0.002, abs_tol=1e-9)
    assert math.isclose(transit.lag(101.0 + base, 106.0), 4.999)   # held 5 s on its way
    assert transit.lag(106.5 + base, 106.5005) == 0.0          # a quicker one: the new base


def test_clocks_that_drift_apart_add_up_to_no_lag():
    """Fault: the node's clock runs 500 parts per million slow against the
    worker's (two hosts). Over two hours that is 3.6 s -- past a node's
    patience for a worker -- but the quickest is taken over the last two
    windows only, so a message on time never lags more than the drift
    within them."""
    transit = Transit()
    worst = 0.0
    t = 0.0
    while t < 7200.0:
        worst = max(worst, transit.lag(t * (1 - 500e-6) + 42.0, t + 0.001))
        t += 0.5
    assert worst < (2 * WINDOW + 1.0) * 500e-6      # the drift over two windows and a step


def test_a_stamp_that_is_no_finite_number_lags_nothing_and_changes_nothing():
    transit = Transit()
    assert transit.lag(10.0, 10.0) == 0.0
    for bad in (None, "10", True, float("nan"), float("inf"), -float("inf"), [1.0], {"t": 1}):
        assert transit.lag(bad, 20.0) == 0.0
    assert transit.lag(11.0, 16.0) == 5.0      # the base is still the first message's


def test_after_a_reset_the_next_message_is_the_quickest():
    """A fresh socket, or a node that welcomed the worker again (maybe
    another process, another clock): what came before says nothing."""
    transit = Transit()
    transit.lag(10.0, 10.0)
    transit.reset()
    assert transit.lag(10.0, 30.0) == 0.0


def test_a_late_message_that_opens_a_window_still_lags():
    """Fault simulated: the window before is forgotten when a new one opens.
    The first message of each window then is its own base: one held 5 s on
    its way that happens to open a window lags nothing, and a DISPATCH a
    network cut held is run. The quickest of the window before still
    counts."""
    transit = Transit()
    base = -300.0
    transit.lag(base + 10.0, 10.0)
    assert transit.lag(base + 20.0, 20.001) < 0.01
    late = transit.lag(base + 10.0 + WINDOW, 15.0 + WINDOW + 1.0)    # opens the next window, held 6 s
    assert math.isclose(late, 6.0)
