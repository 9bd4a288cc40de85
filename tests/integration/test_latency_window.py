"""The routing filter's latency window (litellm_credits.latency) against a real usage log:
the first refresh reads the window, later ones only the new rows, old minutes expire."""

from __future__ import annotations

import psycopg

from litellm_credits.latency import LatencyWindow
from litellm_credits.store.db import Database


def usage(conn: psycopg.Connection, n: int, deployment: str | None, latency: int | None, *,
          group: str = "chat", success: bool = True, age_s: int = 0, tag: str = "") -> None:
    conn.execute(
        "INSERT INTO llm_usage_log (request_id, user_id, model_group, success, latency_ms,"
        " response_metadata, created_at)"
        " SELECT %s || g, 'u', %s, %s, %s,"
        "        CASE WHEN %s::text IS NULL THEN '{}'::jsonb"
        "             ELSE jsonb_build_object('deployment_id', %s::text) END,"
        "        now() - make_interval(secs => %s)"
        "   FROM generate_series(1, %s) g",
        (f"r-{deployment}-{latency}-{age_s}-{success}-{tag}-", group, success, latency,
         deployment, deployment, age_s, n))


async def test_first_refresh_reads_the_window_then_only_new_rows(
    database: Database, db_conn: psycopg.Connection
) -> None:
    usage(db_conn, 3, "a", 100)
    usage(db_conn, 1, "a", 401)
    usage(db_conn, 2, "b", 2000, group="other")
    usage(db_conn, 5, "a", 9999, success=False)          # failures do not count
    usage(db_conn, 5, None, 9999)                         # no deployment id: unusable
    usage(db_conn, 5, "a", 9999, age_s=3600)              # outside the window
    window = LatencyWindow(300)
    assert await window.refresh(database) == {("chat", "a"): 175, ("other", "b"): 2000}
    first_last_id = window.last_id
    assert first_last_id > 0

    # Nothing new: nothing read, same answer.
    assert await window.refresh(database) == {("chat", "a"): 175, ("other", "b"): 2000}
    assert window.last_id == first_last_id

    usage(db_conn, 4, "a", 300, tag="later")
    assert await window.refresh(database) == {("chat", "a"): 238, ("other", "b"): 2000}  # 1901 / 8
    assert window.last_id > first_last_id
    # The same means as the whole window computed at once.
    whole = dict(((r[0], r[1]), r[2]) for r in db_conn.execute(
        "SELECT model_group, response_metadata->>'deployment_id', avg(latency_ms)::integer"
        "  FROM llm_usage_log WHERE success AND latency_ms IS NOT NULL"
        "   AND response_metadata ? 'deployment_id' AND created_at > now() - interval '300 s'"
        " GROUP BY 1, 2").fetchall())
    assert whole == await window.refresh(database)


async def test_minutes_older_than_the_window_are_dropped(
    database: Database, db_conn: psycopg.Connection
) -> None:
    usage(db_conn, 2, "a", 100, age_s=200)
    usage(db_conn, 2, "a", 300)
    now = [0.0]
    window = LatencyWindow(300, clock=lambda: now[0])
    rows_time = db_conn.execute("SELECT extract(epoch FROM now())::float8").fetchone()
    assert rows_time is not None
    now[0] = rows_time[0]
    assert await window.refresh(database) == {("chat", "a"): 200}
    # Four minutes later the 200-second-old rows are past the window; the newer remain.
    now[0] += 240
    assert await window.refresh(database) == {("chat", "a"): 300}
    now[0] += 600
    assert await window.refresh(database) == {}
