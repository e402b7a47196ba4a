from __future__ import annotations

from email.utils import formatdate
from typing import Any

import httpx
import pytest

from pywats_transport.config import RetrySettings
from pywats_transport.policies.retry import RetryBudget, RetryPolicy, parse_retry_after


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def policy(rng: float = 0.5, clock: Clock | None = None, **settings: Any) -> RetryPolicy:
    return RetryPolicy(RetrySettings(**settings), clock=clock or Clock(), wall_clock=lambda: 1_700_000_000.0, rng=lambda: rng)


def req(method: str = "GET", **kw: Any) -> httpx.Request:
    return httpx.Request(method, "http://h/x", **kw)


def test_exact_backoff_without_jitter_doubles_and_caps() -> None:
    p = policy(jitter="none", backoff_base=0.5, backoff_max=3)
    assert [p.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(("jitter", "low", "high"), [("full", 0.0, 2.0), ("equal", 1.0, 2.0)])
def test_jitter_bounds(jitter: str, low: float, high: float) -> None:
    lo = policy(rng=0.0, jitter=jitter, backoff_base=0.5).backoff(3)
    hi = policy(rng=0.999999, jitter=jitter, backoff_base=0.5).backoff(3)
    assert lo == pytest.approx(low) and hi == pytest.approx(high, rel=1e-5)


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None, now) is None


def test_status_retry_uses_retry_after_capped_by_backoff_max() -> None:
    p = policy(jitter="none", backoff_base=0.5, backoff_max=10)
    a = p.start(req())
    d = p.on_response(a, httpx.Response(503, headers={"Retry-After": "4"}))
    assert (d.retry, d.delay, d.reason) == (True, 4.0, "status_503")
    d = p.on_response(a, httpx.Response(429, headers={"Retry-After": "60"}))
    assert (d.retry, d.delay) == (True, 10.0)
    d = p.on_response(a, httpx.Response(503))
    assert (d.retry, d.reason) == (False, "attempts_exhausted")
    assert p.stats.as_dict()["retries_by_reason"] == {"status_503": 1, "status_429": 1}


def test_success_and_other_statuses_stop() -> None:
    p = policy()
    a = p.start(req())
    assert not p.on_response(a, httpx.Response(200)).retry
    assert not p.on_response(a, httpx.Response(404)).retry


def test_post_never_resent_after_reaching_server_unless_opted_in() -> None:
    p = policy()
    assert p.on_response(p.start(req("POST")), httpx.Response(503)).reason == "not_idempotent"
    assert p.on_exception(p.start(req("POST")), httpx.RemoteProtocolError("dropped")).reason == "not_idempotent"
    assert p.on_exception(p.start(req("POST")), httpx.ReadTimeout("slow")).retry is False
    # Never reached the server: safe whatever the method.
    assert p.on_exception(p.start(req("POST")), httpx.ConnectError("refused")).retry
    assert p.on_response(p.start(req("POST", headers={"Idempotency-Key": "k1"})), httpx.Response(503)).retry
    assert p.on_response(p.start(req("POST", extensions={"retry": {"idempotent": True}})), httpx.Response(503)).retry


def test_read_timeouts_only_for_idempotent_and_when_enabled() -> None:
    assert policy().on_exception(policy().start(req()), httpx.ReadTimeout("t")).retry
    p = policy(retry_read_timeouts=False)
    assert not p.on_exception(p.start(req()), httpx.ReadTimeout("t")).retry
    p = policy(retry_connect_errors=False)
    assert not p.on_exception(p.start(req()), httpx.ConnectError("t")).retry
    assert not policy().on_exception(policy().start(req()), ValueError("bug")).retry


def test_streamed_body_is_not_replayed() -> None:
    def body() -> Any:
        yield b"chunk"

    p = policy()
    assert p.on_response(p.start(req("PUT", content=body())), httpx.Response(503)).reason == "body_not_replayable"


def test_per_request_overrides() -> None:
    p = policy()
    assert p.on_response(p.start(req(extensions={"retry": {"enabled": False}})), httpx.Response(503)).reason == "disabled"
    a = p.start(req(extensions={"retry": {"max_attempts": 1}}))
    assert p.on_response(a, httpx.Response(503)).reason == "attempts_exhausted"
    for wrong in (0, "3", 2.5, True):  # "3" failed with int()'s own words, 2.5 and True were taken as 2 and 1
        with pytest.raises(ValueError, match=f"retry.max_attempts must be an integer >= 1, got {wrong!r}"):
            p.start(req(extensions={"retry": {"max_attempts": wrong}}))


def test_deadline_stops_before_overrunning() -> None:
    clock = Clock()
    p = policy(clock=clock, jitter="none", backoff_base=1.0, deadline=2.5, max_attempts=10)
    a = p.start(req())
    assert p.on_response(a, httpx.Response(503)).delay == 1.0
    clock.t += 1.0
    d = p.on_response(a, httpx.Response(503))
    assert (d.retry, d.reason) == (False, "deadline")  # 1.0 elapsed + 2.0 backoff > 2.5


def test_budget_limits_retries_to_ratio_plus_floor_over_window() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, floor=2, window=10, clock=clock)
    for _ in range(10):
        budget.record_request()
    assert [budget.try_spend() for _ in range(5)] == [True, True, True, True, False]
    clock.t += 11  # the window slid past all of it
    assert budget.try_spend() and budget.try_spend() and not budget.try_spend()


def test_budget_exhaustion_is_counted() -> None:
    p = policy(budget_floor=0, budget_ratio=0.0)
    d = p.on_response(p.start(req()), httpx.Response(503))
    assert (d.retry, d.reason) == (False, "budget_exhausted")
    assert p.stats.budget_exhausted == 1


def test_retry_after_zero_means_now() -> None:
    p = policy(jitter="none", backoff_base=0.5, backoff_max=10)
    a = p.start(req())
    d = p.on_response(a, httpx.Response(503, headers={"Retry-After": "0"}))
    assert (d.retry, d.delay) == (True, 0.0)
    d = p.on_response(a, httpx.Response(503))  # no Retry-After: our own backoff
    assert (d.retry, d.delay) == (True, 1.0)
