"""The settlement record: its one JSON form, old spool lines, and the SQL it must match."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

import litellm_credits
from litellm_credits.settlement.record import FIELDS, RecordFormatError, SettlementRecord

SQL = Path(litellm_credits.__file__).parent / "store" / "migrations" / "0003_settlement.sql"

# A success and a failure line exactly as the previous version wrote them to the spool
# (json.dumps of the record dict, Decimal and datetime through str/isoformat). The failure
# record of that version left the token, cost and latency keys out.
OLD_SUCCESS = (
    '{"request_id":"req_0f3c","user_id":"alice","model":"openai/gpt-4o-mini",'
    '"model_group":"chat","provider":"openai","api_base":"http://127.0.0.1:8101/v1",'
    '"power_level":"balanced","byok_key_id":null,"prompt_tokens":12,"completion_tokens":5,'
    '"cached_tokens":0,"total_tokens":17,"provider_cost_usd":"0.0000048",'
    '"credits_charged":"0.00004800","cost_multiplier":"1.0","latency_ms":12,'
    '"time_to_first_token_ms":null,"success":true,"status_code":200,"error_type":null,'
    '"error_message":null,"app_id":null,"session_id":null,'
    '"request_metadata":{"litellm_call_id":"c1","end_user":null,"stream":false,'
    '"route_rule":"preferred","call_type":"acompletion"},'
    '"response_metadata":{"deployment_id":"chat-openai","full_credits":"0.000048",'
    '"priced_from":"config","litellm_response_cost":4.8e-06,"cache_hit":false,'
    '"status_detail":null},"created_at":"2026-11-01T10:00:00.123456+00:00"}'
)
OLD_FAILURE = (
    '{"request_id":"req_9a","user_id":"bob","model":null,"model_group":"chat",'
    '"provider":null,"api_base":null,"power_level":"eco","byok_key_id":null,"success":false,'
    '"status_code":402,"error_type":"insufficient_credits","error_message":"insufficient",'
    '"credits_charged":"0","cost_multiplier":null,"app_id":null,"session_id":null,'
    '"request_metadata":{"route_rule":null},"response_metadata":{},'
    '"created_at":"2026-11-01T10:00:01+00:00"}'
)

_PY_TYPE = {"TEXT": str, "BIGINT": int, "INTEGER": int, "NUMERIC": Decimal,
            "BOOLEAN": bool, "JSONB": dict, "TIMESTAMPTZ": datetime}


def settle_usage_columns() -> list[list[tuple[str, str]]]:
    """Every column definition list settle_usage gives jsonb_to_recordset(p_records)."""
    text = SQL.read_text()
    body = text[text.index("CREATE FUNCTION settle_usage"):]
    body = body[:body.index("$$;")]
    lists = []
    for match in re.finditer(r"jsonb_to_recordset\(p_records\)\s+AS\s+\w*\s*\(", body):
        depth, start = 1, match.end()
        end = start
        while depth:
            depth += {"(": 1, ")": -1}.get(body[end], 0)
            end += 1
        columns = [c.split() for c in body[start:end - 1].split(",")]
        lists.append([(c[0], c[1].upper()) for c in columns])
    return lists


def test_the_record_has_exactly_the_columns_settle_usage_reads() -> None:
    lists = settle_usage_columns()
    assert len(lists) >= 4
    main = max(lists, key=len)
    assert [name for name, _ in main] == list(FIELDS)  # same names, same order
    sql_types = dict(main)
    for columns in lists:  # the checks before the insert read the same names, same types
        for name, sql_type in columns:
            assert sql_types[name] == sql_type, name
    hints = {f.name: str(f.type) for f in dataclasses.fields(SettlementRecord)}
    for name, sql_type in main:
        py = _PY_TYPE[sql_type].__name__
        expected = "Mapping" if py == "dict" else py
        assert expected in hints[name], (name, sql_type, hints[name])


def test_json_is_json_safe_with_money_as_exact_text() -> None:
    rec = SettlementRecord(request_id="r", user_id="u", success=True,
                           credits_charged=Decimal("0E-8"), provider_cost_usd=Decimal("1E-7"),
                           created_at=datetime(2026, 1, 2, tzinfo=UTC))
    out = rec.to_json()
    assert list(out) == list(FIELDS)
    assert out["credits_charged"] == "0.00000000" and out["provider_cost_usd"] == "0.0000001"
    assert out["created_at"] == "2026-01-02T00:00:00+00:00"
    assert json.loads(json.dumps(out)) == out
    assert SettlementRecord.from_json(json.loads(json.dumps(out))) == rec


@pytest.mark.parametrize("line", [OLD_SUCCESS, OLD_FAILURE])
def test_a_line_written_by_the_old_code_still_reads(line: str) -> None:
    old = json.loads(line)
    rec = SettlementRecord.from_json(old)
    assert rec.request_id == old["request_id"] and rec.success is old["success"]
    assert rec.credits_charged == Decimal(old["credits_charged"])
    assert rec.created_at.tzinfo is not None
    # What settle_usage receives is what the old code sent for every key it sent.
    new = rec.to_json()
    for key, value in old.items():
        if key in ("credits_charged", "provider_cost_usd", "cost_multiplier") and value:
            assert Decimal(new[key]) == Decimal(value)
        elif key == "created_at":
            assert datetime.fromisoformat(new[key]) == datetime.fromisoformat(value)
        else:
            assert new[key] == value, key
    # Keys the old failure record left out go as null, which the SQL defaults as before.
    assert all(new[k] is None for k in FIELDS if k not in old and k not in ("success",))


def test_the_old_success_line_keeps_its_exact_numbers() -> None:
    rec = SettlementRecord.from_json(json.loads(OLD_SUCCESS))
    assert rec.provider_cost_usd == Decimal("0.0000048")
    assert rec.credits_charged == Decimal("0.00004800")
    assert rec.request_metadata["route_rule"] == "preferred" and rec.had_hold


@pytest.mark.parametrize("bad", [
    [], "x", {"user_id": "u", "success": True},
    {"request_id": "r", "user_id": "u", "success": "yes"},
    {"request_id": "r", "user_id": "u", "success": True, "credits_charged": "ten"},
    {"request_id": "r", "user_id": "u", "success": True, "credits_charged": 1.5e400},
    {"request_id": "r", "user_id": "u", "success": True, "prompt_tokens": "12"},
    {"request_id": "r", "user_id": "u", "success": True, "created_at": "yesterday"},
])
def test_a_line_that_is_not_a_record_is_refused(bad: object) -> None:
    with pytest.raises(RecordFormatError):
        SettlementRecord.from_json(bad)


def test_records_are_frozen_and_slotted() -> None:
    rec = SettlementRecord(request_id="r", user_id="u", success=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.user_id = "v"  # type: ignore[misc]
    assert not hasattr(rec, "__dict__")
    assert rec.replace(success=True).success and not rec.success
