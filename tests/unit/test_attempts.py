"""Per-request attempt state: keys in memory only, failover, BYOK fallback, early settlement.

Everything here is process memory, so the tests drive :class:`Attempts` directly with
real :class:`Admission` and :class:`RequestContext` values; the clock the states age by
is replaced where expiry matters.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from litellm_credits import attempts as attempts_mod
from litellm_credits.admission import Admission, ByokSecret
from litellm_credits.attempts import STATE_TTL_SECONDS, Attempts, AttemptState
from litellm_credits.context import RequestContext

D = Decimal
OPENAI_KEY = "sk-user-openai-SECRET-1234567890"
ANTHROPIC_KEY = "sk-ant-user-SECRET-abcdefghij"


def ctx(rid: str = "r1", route: tuple[str, ...] = ("d-openai", "d-anthropic", "d-azure"),
        fallbacks: dict[int, bool] | None = None) -> RequestContext:
    return RequestContext(request_id=rid, user_id="ann", model_group="chat", route=route,
                          byok={"openai": 7, "anthropic": 8},
                          fallbacks=fallbacks if fallbacks is not None else {7: True, 8: False},
                          hold=D("1"))


def admission(c: RequestContext, *, keys: bool = True) -> Admission:
    secrets = {"openai": ByokSecret(7, OPENAI_KEY), "anthropic": ByokSecret(8, ANTHROPIC_KEY)}
    return Admission(context=c, keys=secrets if keys else {}, num_retries=2)


def dep(deployment_id: str | None) -> dict[str, Any]:
    info = {"id": deployment_id} if deployment_id is not None else None
    return {"model_name": "chat", "litellm_params": {"model": "x"}, "model_info": info}


HEALTHY = [dep("d-openai"), dep("d-anthropic"), dep("d-azure")]


class FakeClock:
    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(attempts_mod, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


# -- lifecycle ---------------------------------------------------------------------------

def test_start_get_finish() -> None:
    a = Attempts()
    c = ctx()
    assert a.get(c) is None
    a.start(admission(c))
    state = a.get(c)
    assert state is not None and state.keys == {"openai": (7, OPENAI_KEY),
                                                "anthropic": (8, ANTHROPIC_KEY)}
    assert a.finish(c) is state
    assert a.get(c) is None
    assert a.finish(c) is None  # finishing twice (success and failure events) is harmless


def test_requests_keep_separate_states() -> None:
    a = Attempts()
    one, two = ctx("r1"), ctx("r2")
    a.start(admission(one))
    a.start(admission(two, keys=False))
    a.failed(one, "d-azure", "azure", 500)
    assert a.key_for(two, "openai") is None
    assert a.key_for(one, "openai") == OPENAI_KEY
    assert a.next_deployment(two, HEALTHY) == [dep("d-openai")]
    state_two = a.get(two)
    assert state_two is not None and state_two.failed == set()


def test_a_restarted_request_id_starts_from_a_clean_state() -> None:
    a = Attempts()
    c = ctx()
    a.start(admission(c))
    a.failed(c, "d-openai", None, 500)
    a.start(admission(c))
    assert a.next_deployment(c, HEALTHY) == [dep("d-openai")]


# -- routing -----------------------------------------------------------------------------

def test_next_deployment_follows_the_route_skipping_failed_and_unhealthy() -> None:
    a = Attempts()
    c = ctx()
    a.start(admission(c, keys=False))
    assert a.next_deployment(c, HEALTHY) == [dep("d-openai")]
    a.failed(c, "d-openai", "openai", 500)
    assert a.next_deployment(c, HEALTHY) == [dep("d-anthropic")]
    # d-anthropic is in cooldown (not among the healthy): the next one on the route.
    assert a.next_deployment(c, [dep("d-openai"), dep("d-azure")]) == [dep("d-azure")]
    a.failed(c, "d-anthropic", "anthropic", 429)
    a.failed(c, "d-azure", "azure", 503)
    assert a.next_deployment(c, HEALTHY) == []  # the route is exhausted: no off-route pick


def test_next_deployment_never_picks_off_route_or_unidentified_deployments() -> None:
    a = Attempts()
    c = ctx(route=("d-azure",))
    a.start(admission(c))
    assert a.next_deployment(c, [dep("d-openai"), dep(None), {"model_name": "chat"}]) == []
    assert a.next_deployment(ctx(route=()), HEALTHY) == []


def test_next_deployment_without_a_state_uses_the_route_as_is() -> None:
    assert Attempts().next_deployment(ctx("unknown"), HEALTHY) == [dep("d-openai")]


# -- BYOK keys and fallback ----------------------------------------------------------------

def test_key_for_gives_the_users_key_for_the_attempts_provider_only() -> None:
    a = Attempts()
    c = ctx()
    a.start(admission(c))
    assert a.key_for(c, "openai") == OPENAI_KEY
    assert a.key_for(c, "anthropic") == ANTHROPIC_KEY
    assert a.key_for(c, "azure") is None
    assert a.key_for(c, None) is None
    assert a.key_for(ctx("other"), "openai") is None


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_user_key_falls_back_to_the_platform_key_when_allowed(status: int) -> None:
    a = Attempts()
    c = ctx()  # key 7 (openai) may fall back
    a.start(admission(c))
    a.failed(c, "d-openai", "openai", status)
    state = a.get(c)
    assert state is not None
    assert a.key_for(c, "openai") is None  # the platform key now
    assert state.byok_key_id("openai") is None  # and the charge is not a BYOK one
    assert a.next_deployment(c, HEALTHY) == [dep("d-openai")]  # same deployment, retried
    # A second refusal, now with the platform key, fails the deployment itself.
    a.failed(c, "d-openai", "openai", status)
    assert a.next_deployment(c, HEALTHY) == [dep("d-anthropic")]


def test_a_refused_user_key_without_fallback_fails_the_deployment() -> None:
    a = Attempts()
    c = ctx()  # key 8 (anthropic) may not fall back
    a.start(admission(c))
    a.failed(c, "d-anthropic", "anthropic", 401)
    assert a.key_for(c, "anthropic") == ANTHROPIC_KEY
    state = a.get(c)
    assert state is not None and state.failed == {"d-anthropic"}
    assert state.byok_key_id("anthropic") == 8


@pytest.mark.parametrize("status", [400, 404, 429, 500, None])
def test_other_failures_of_a_user_key_do_not_fall_back(status: Any) -> None:
    a = Attempts()
    c = ctx()
    a.start(admission(c))
    a.failed(c, "d-openai", "openai", status)
    assert a.key_for(c, "openai") == OPENAI_KEY
    state = a.get(c)
    assert state is not None and state.failed == {"d-openai"}


def test_a_failure_for_an_unknown_request_is_ignored() -> None:
    a = Attempts()
    a.failed(ctx("nobody"), "d-openai", "openai", 401)
    assert a.get(ctx("nobody")) is None


def test_byok_key_id_and_secrets() -> None:
    state = AttemptState({"openai": (7, OPENAI_KEY)})
    assert state.byok_key_id("openai") == 7
    assert state.byok_key_id("anthropic") is None
    assert state.byok_key_id(None) is None
    assert state.secrets == (OPENAI_KEY,)
    assert AttemptState({}).secrets == ()


# -- never printing a key ------------------------------------------------------------------

def test_no_printed_form_shows_a_plaintext_key(caplog: pytest.LogCaptureFixture) -> None:
    a = Attempts()
    c = ctx()
    adm = admission(c)
    a.start(adm)
    a.failed(c, "d-openai", "openai", 401)
    state = a.get(c)
    assert state is not None
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("state %s %r %s %r", state, state, adm, a)
    printed = [repr(state), str(state), f"{state}", repr(adm), str(adm), repr(a),
               repr(adm.keys), caplog.text]
    for text in printed:
        assert OPENAI_KEY not in text and ANTHROPIC_KEY not in text
        assert "SECRET" not in text
    assert repr(state) == "AttemptState(providers=['anthropic', 'openai'], failed=[])"


# -- settled before the response left ------------------------------------------------------

def test_settled_early_is_taken_once() -> None:
    a = Attempts()
    c = ctx()
    assert a.charged(c) is None
    assert not a.take_settled(c)
    a.settled_early(c, D("0.12345678"))
    assert a.charged(c) == D("0.12345678")
    assert a.charged(c) == D("0.12345678")  # reading the charge does not consume it
    assert a.take_settled(c)
    assert not a.take_settled(c)  # the success event builds no second record, once
    assert a.charged(c) is None


def test_settled_early_is_per_request_and_independent_of_the_attempt_state() -> None:
    a = Attempts()
    one, two = ctx("r1"), ctx("r2")
    a.start(admission(one))
    a.settled_early(one, D("1"))
    a.finish(one)  # the state goes with the final event; the settlement mark stays
    assert a.charged(one) == D("1") and a.charged(two) is None
    assert not a.take_settled(two) and a.take_settled(one)


# -- expiry --------------------------------------------------------------------------------

def test_states_of_requests_that_never_finish_are_dropped_after_the_ttl(clock: FakeClock) -> None:
    a = Attempts()
    old, settled = ctx("old"), ctx("settled")
    a.start(admission(old))
    a.settled_early(settled, D("2"))
    clock.now += STATE_TTL_SECONDS - 61
    young = ctx("young")
    a.start(admission(young))
    assert a.get(old) is not None  # not yet an hour old
    clock.now += 62
    a.start(admission(ctx("trigger")))
    assert a.get(old) is None
    assert a.charged(settled) is None
    assert a.get(young) is not None


def test_pruning_runs_at_most_once_a_minute(clock: FakeClock) -> None:
    a = Attempts()
    old = ctx("old")
    a.start(admission(old))
    clock.now += STATE_TTL_SECONDS - 30
    a.start(admission(ctx("prunes-now")))  # prunes (nothing old enough yet)
    clock.now += 31  # "old" is now past the TTL, but the last prune was 31 s ago
    a.start(admission(ctx("too-soon")))
    assert a.get(old) is not None
    clock.now += 30
    a.start(admission(ctx("later")))
    assert a.get(old) is None
