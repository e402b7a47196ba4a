from __future__ import annotations

from typing import Any

import pytest

from pywats_transport.config import ThrottleSettings
from pywats_transport.policies.throttle import ThrottlePolicy


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def make(**settings: Any) -> tuple[ThrottlePolicy, Clock]:
    clock = Clock()
    return ThrottlePolicy(ThrottleSettings(**settings), clock=clock, wall_clock=lambda: 1_700_000_000.0), clock


def test_burst_then_exact_spacing_in_arrival_order() -> None:
    p, clock = make(rate=4, burst=2)
    waits = [p.acquire("h") for _ in range(5)]
    assert waits == [0.0, 0.0, pytest.approx(0.25), pytest.approx(0.5), pytest.approx(0.75)]
    clock.t += 10
    assert p.acquire("h") == 0.0


def test_per_host_buckets_are_separate_unless_disabled() -> None:
    p, _ = make(rate=1, burst=1)
    assert (p.acquire("a"), p.acquire("b"), p.acquire("a")) == (0.0, 0.0, pytest.approx(1.0))
    p, _ = make(rate=1, burst=1, per_host=False)
    assert (p.acquire("a"), p.acquire("b")) == (0.0, pytest.approx(1.0))


def test_max_wait_refuses_without_taking_a_token() -> None:
    p, _ = make(rate=1, burst=1, max_wait=0.5)
    assert p.acquire("h") == 0.0
    assert p.acquire("h") is None
    assert p.would_wait("h") == pytest.approx(1.0)
    assert p.stats.rejections == 1
    p2, clock = make(rate=1, burst=1, max_wait=1.0)
    p2.acquire("h")
    assert p2.acquire("h") == pytest.approx(1.0)


def test_adaptive_slows_down_on_429_and_recovers_gradually() -> None:
    p, clock = make(rate=10, burst=10)
    p.acquire("h")
    p.on_response("h", 429, "2")
    assert p.rates() == {"h": 5.0}
    assert p.acquire("h") == pytest.approx(2.0)  # nothing goes before Retry-After
    p.on_response("h", 503, None)  # a 503 without Retry-After is not a throttle signal
    assert p.rates()["h"] == 5.0
    rates = []
    for _ in range(30):
        p.on_response("h", 200, None)
        rates.append(p.rates()["h"])
    assert rates == sorted(rates) and 5.0 < rates[0] < 6.0 and rates[-1] == pytest.approx(10.0, abs=0.3)
    assert p.stats.slowdowns == 1


def test_adaptive_off_ignores_429() -> None:
    p, _ = make(rate=10, adaptive=False)
    p.acquire("h")
    p.on_response("h", 429, "5")
    assert p.rates() == {"h": 10.0} and p.acquire("h") == 0.0


def test_slowdown_never_goes_below_min_rate() -> None:
    p, _ = make(rate=2, min_rate=1.5)
    p.acquire("h")
    for _ in range(5):
        p.on_response("h", 429, None)
    assert p.rates()["h"] == 1.5


def test_what_the_server_says_decides_a_slowdown() -> None:
    p, clock = make(rate=10, burst=10)
    p.acquire("h")
    for _ in range(50):  # 503 and 429 asking for no wait: the server is busy, not asking us to slow down
        p.on_response("h", 503, "0")
        clock.t += 2.0
    p.on_response("h", 429, "0")
    assert p.rates() == {"h": 10.0} and p.stats.slowdowns == 0
    p.on_response("h", 200, None)  # a success between: the next 429 starts a new count
    p.on_response("h", 429, "0")
    assert p.rates() == {"h": 10.0} and p.stats.slowdowns == 0
    p.on_response("h", 429, None)  # a second 429 in a row: repeated, so slow down
    assert p.rates() == {"h": 5.0} and p.stats.slowdowns == 1
    clock.t += 5
    p.on_response("h", 503, "2")  # a positive Retry-After always counts
    assert p.rates() == {"h": 2.5} and p.acquire("h") == pytest.approx(2.0)


def test_retry_after_is_capped_by_retry_after_max() -> None:
    p, _ = make(rate=10, burst=10, retry_after_max=5)
    p.acquire("h")
    p.on_response("h", 429, "3600")
    assert p.acquire("h") == pytest.approx(5.0)


def test_a_resized_bucket_keeps_its_slow_down_in_proportion_and_wins_back_to_the_new_rate() -> None:
    """A fleet station's local share changes with the count of stations: a host the server slowed stays
    slowed by as much, and recovers to the new share, not to the old."""
    p, clock = make(rate=30, burst=3, adaptive=True)
    p.acquire("h")
    p.on_response("h", 429, "1")
    assert p.rates()["h"] == 15.0 and p.slowed == 1
    p.resize("h", 10.0, 1)
    assert p.rates()["h"] == 5.0 and p.slowed == 1
    for _ in range(200):
        p.on_response("h", 200, None)
    assert p.rates()["h"] == pytest.approx(10.0) and p.slowed == 0 and not p.attentive
    p.resize("h", 30.0, 3)  # fewer stations: the whole rate and burst again
    clock.t += 60
    assert p.rates()["h"] == 30.0 and [p.acquire("h") for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(1 / 30)]


def test_a_resize_that_lifts_a_slowed_rate_to_its_top_counts_it_recovered() -> None:
    p, _ = make(rate=4, burst=2, adaptive=True, min_rate=2)
    p.acquire("h")
    p.on_response("h", 429, "1")
    assert p.rates()["h"] == 2.0 and p.slowed == 1
    p.resize("h", 1.0, 1)  # a share under min_rate: the slow-down has nothing left to take
    assert p.rates()["h"] == 1.0 and p.slowed == 0


def test_a_client_of_ever_new_hosts_keeps_a_bounded_number_of_buckets() -> None:
    """One bucket per host met, for the policy's life: a client of ever new hosts grew its buckets and
    the per-host rates in its stats without end."""
    from pywats_transport.policies.throttle import MAX_BUCKETS

    p, clock = make(rate=10, burst=2)
    p.on_response("slowed", 429, "1")  # a bucket that remembers a slow-down
    for i in range(5 * MAX_BUCKETS):
        assert p.acquire(f"h{i}.example") == 0.0
        clock.t += 0.01
    assert len(p.rates()) <= MAX_BUCKETS + 1
    assert p.rates()["slowed"] == 5.0  # kept: a new bucket would have forgotten the slow-down
    assert f"h{5 * MAX_BUCKETS - 1}.example" in p.rates()  # the latest are kept too


def test_a_bucket_in_use_survives_the_sweep_of_those_at_rest() -> None:
    from pywats_transport.policies.throttle import MAX_BUCKETS

    p, clock = make(rate=1, burst=1)
    assert p.acquire("busy") == 0.0
    for i in range(2 * MAX_BUCKETS):  # all at the same instant: none has refilled, none is dropped
        p.acquire(f"h{i}")
    assert len(p.rates()) == 2 * MAX_BUCKETS + 1
    assert p.acquire("busy") == pytest.approx(1.0)  # its spent token is remembered
    clock.t += 60  # every bucket is full again: at rest, as a new one would be
    added = 0
    while len(p.rates()) > 1:  # the next sweep comes once the buckets have doubled since the last
        clock.t += 1  # the one before is at rest again
        assert p.acquire(f"n{added}") == 0.0
        added += 1
        assert added <= 4 * MAX_BUCKETS, "no sweep dropped the buckets at rest"
    assert p.acquire(f"n{added - 1}") == pytest.approx(1.0)  # the one in use is kept


def test_a_slow_down_never_speeds_a_host_configured_below_min_rate_up() -> None:
    """``min_rate`` (0.5/s) is the floor a slow-down stops at: a host configured at 0.2/s was "slowed" by a
    429 to 0.5/s, two and a half times what the user asked, for good; the fleet's slowed rates likewise."""
    from pywats_transport.policies.fleet_throttle import levels

    p, clock = make(rate=0.2, burst=1)
    assert p.acquire("h") == 0.0
    p.on_response("h", 429, "1")
    assert p.rates() == {"h": 0.2}
    assert p.acquire("h") == pytest.approx(5.0)  # one request per 5 s, as configured
    assert (p.slowed, p.attentive) == (0, False)  # nothing to win back
    fleet = levels(ThrottleSettings(rate=0.2, burst=1, backend="redis"))
    assert [rates[0].limit / rates[0].interval * 1000 for rates in fleet] == [pytest.approx(0.2)] * len(fleet)
    p, _ = make(rate=10, burst=5)
    p.on_response("h", 429, "1")
    assert p.rates() == {"h": 5.0} and p.slowed == 1  # above min_rate, a slow-down halves as before


def conforms(times: list[float], rate: float, burst: int) -> bool:
    """Whether requests sent at ``times`` are ones a token bucket of ``rate`` and ``burst`` lets through."""
    level, last = float(burst), None
    for t in sorted(times):
        if last is not None:
            level = min(float(burst), level + (t - last) * rate)
        if level < 1.0 - 1e-9:
            return False
        level -= 1.0
        last = t
    return True


def test_a_turn_given_back_is_the_next_arrivals() -> None:
    p, clock = make(rate=1, burst=1)
    assert p.acquire("h") == 0.0
    turns = [p.turn("h") for _ in range(10)]  # turns at +1 s .. +10 s
    assert [t[0] for t in turns if t] == [pytest.approx(float(n)) for n in range(1, 11)]
    clock.t += 0.5
    for _, at in turns[:3]:  # type: ignore[misc]
        p.give_back("h", at)  # three waiters left before their turns
    assert [p.acquire("h") for _ in range(4)] == [pytest.approx(0.5), pytest.approx(1.5), pytest.approx(2.5),
                                                  pytest.approx(10.5)]
    clock.t += 100
    p.give_back("h", turns[3][1])  # type: ignore[index]  # a turn already passed is nobody's
    assert p.acquire("h") == 0.0 and p.acquire("h") == pytest.approx(1.0)


def test_a_turn_given_back_is_not_taken_past_the_wait_limit_or_inside_a_hold() -> None:
    p, clock = make(rate=1, burst=1)
    p.acquire("h")
    turns = [p.turn("h") for _ in range(5)]
    p.give_back("h", turns[4][1])  # type: ignore[index]  # the turn at +5 s
    assert p.acquire("h", max_wait=1.0) is None
    p.on_response("h", 429, "8")  # the server asks for 8 s: a turn inside that hold cannot be handed on
    assert p.acquire("h") >= 8.0  # not the turn at +5 s


@pytest.mark.parametrize("seed", range(5))
def test_turns_given_back_keep_the_schedule_one_the_bucket_allows(seed: int) -> None:
    import random

    rng = random.Random(seed)
    p, clock = make(rate=5, burst=3)
    start = clock.t
    waiting: list[float] = []  # turns of those still waiting
    sent: list[float] = []
    while clock.t < start + 60:
        clock.t += rng.expovariate(12)  # arrivals well over the rate: a queue forms
        sent += [at for at in waiting if at <= clock.t]
        waiting = [at for at in waiting if at > clock.t]
        for at in list(waiting):
            if rng.random() < 0.15:  # callers give up (timeouts, cancellations) before their turn
                waiting.remove(at)
                p.give_back("h", at)
        turn = p.turn("h", max_wait=3.0)
        if turn is not None:
            waiting.append(turn[1])
    sent += waiting
    assert conforms(sent, rate=5, burst=3)
    assert len(sent) >= 0.9 * 5 * 60  # the turns given back were used: close to the rate all along
