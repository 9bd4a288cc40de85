"""The request context in request metadata: one JSON-safe form, trusted only if ours."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

from litellm_credits import context
from litellm_credits.context import CTX, Issued, RequestContext

FULL = RequestContext(
    request_id="req_1", user_id="ann", model_group="chat", power_level="eco",
    multiplier=Decimal("0.5"), hold=Decimal("0.00000100"), credits_per_usd=Decimal("10"),
    route=("d1", "d2"), route_rule="preferred", byok={"openai": 7}, fallbacks={7: True},
    available_after=Decimal("9.99999900"), fail_open=False)


def test_round_trip_through_json_keeps_decimals_exact() -> None:
    entry = json.loads(json.dumps(FULL.to_metadata()))  # LiteLLM copies metadata as JSON
    back = RequestContext.from_metadata(entry)
    assert back == FULL and isinstance(back.hold, Decimal)
    assert entry["hold"] == "0.00000100" and entry["available_after"] == "9.99999900"


def test_a_refused_context_carries_no_admission_fields() -> None:
    ctx = RequestContext(request_id="r", user_id="u", model_group="chat")
    entry = ctx.to_metadata()
    assert "hold" not in entry and RequestContext.from_metadata(entry) == ctx
    assert not ctx.admitted and FULL.admitted


def test_a_client_written_entry_is_never_trusted() -> None:
    forged = dict(FULL.to_metadata(), issued_by="guess")
    assert RequestContext.from_metadata(forged) is None
    assert RequestContext.from_metadata({"request_id": "evil", "user_id": "ann"}) is None
    assert RequestContext.from_metadata("credits") is None


def test_read_finds_it_under_either_metadata_key() -> None:
    for key in ("metadata", "litellm_metadata"):
        data: dict[str, Any] = {key: {CTX: FULL.to_metadata()}}
        assert context.read(data) == FULL
    event = {"litellm_params": {"metadata": {CTX: FULL.to_metadata()}}}
    assert context.read_event(event) == FULL


def test_the_same_data_keeps_its_request_id_a_copy_does_not() -> None:
    issued = Issued()
    data: dict[str, Any] = {"model": "chat"}
    first = issued.request_id(data)
    issued.write(data, RequestContext(request_id=first, user_id="ann"))
    assert issued.request_id(data) == first  # the hook ran twice on the same data
    clone = copy.deepcopy(data)  # e.g. a client replaying a captured body
    assert issued.request_id(clone) != first
    assert first.startswith("req_")


def test_the_written_entry_is_read_back_without_parsing_and_copies_still_read() -> None:
    issued = Issued()
    data: dict[str, Any] = {"model": "chat"}
    issued.write(data, FULL)
    entry = data["metadata"][CTX]
    assert context.read(data) is FULL  # the object written, not a re-parse of its JSON
    assert json.loads(json.dumps(entry)) == FULL.to_metadata()  # LiteLLM sees plain JSON
    assert context.read(copy.deepcopy(data)) == FULL
    # The shortcut belongs to the written object only: the same fields in a plain dict are
    # parsed and checked for the process token like any other entry.
    assert RequestContext.from_metadata(dict(entry)) == FULL
    assert RequestContext.from_metadata(dict(entry, issued_by="guess")) is None
