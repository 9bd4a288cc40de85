-- Named queries of low-balance alerts and monitoring (litellm_credits.alerts,
-- litellm_credits.monitoring). Every name starts with alerts_. Parameters are
-- always bound, never formatted in. The tables and functions are in
-- migrations/0004_alerts.sql.

-- name: alerts_claim_users
-- Record the alerts due for these accounts (after a settlement batch).
SELECT id, user_id, kind, episode, balance, threshold, tier, created_at
  FROM credits_claim_balance_alerts(%(user_ids)s::text[], %(tiers)s::jsonb, %(status)s);

-- name: alerts_claim_sweep
-- Record the alerts due for any account whose last ledger movement was a debit.
SELECT id, user_id, kind, episode, balance, threshold, tier, created_at
  FROM credits_claim_balance_alerts(NULL, %(tiers)s::jsonb, %(status)s);

-- name: alerts_take_due
-- Claim up to %(limit)s alerts to send: pending ones whose time has come, and
-- ones whose sender's lease ran out (it died mid-send). SKIP LOCKED keeps two
-- proxies from taking the same rows.
UPDATE credit_alerts a
   SET status = 'sending', attempts = a.attempts + 1,
       locked_until = now() + make_interval(secs => %(lease_seconds)s),
       locked_by = %(worker)s
 WHERE a.id IN (
       SELECT d.id FROM credit_alerts d
        WHERE (d.status = 'pending' AND d.next_attempt_at <= now())
           OR (d.status = 'sending' AND d.locked_until < now())
        ORDER BY d.next_attempt_at, d.id
        LIMIT %(limit)s
          FOR UPDATE SKIP LOCKED)
RETURNING a.id, a.user_id, a.kind, a.episode, a.balance, a.threshold, a.tier, a.attempts,
          a.created_at;

-- name: alerts_mark_sent
UPDATE credit_alerts
   SET status = 'sent', sent_at = now(), locked_until = NULL, response_status = %(status)s,
       last_error = NULL
 WHERE id = %(id)s AND status = 'sending' AND locked_by = %(worker)s
RETURNING id;

-- name: alerts_mark_retry
-- A failed attempt: try again after %(delay_seconds)s, or give up (failed)
-- once %(max_attempts)s attempts were made.
UPDATE credit_alerts
   SET status = CASE WHEN attempts >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
       next_attempt_at = now() + make_interval(secs => %(delay_seconds)s),
       locked_until = NULL, response_status = %(status)s, last_error = %(error)s
 WHERE id = %(id)s AND status = 'sending' AND locked_by = %(worker)s
RETURNING id, status, attempts;

-- name: alerts_backlog
-- Alerts waiting to be delivered, and the age of the oldest, for the metrics.
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_seconds
  FROM credit_alerts
 WHERE status IN ('pending', 'sending');

-- name: alerts_accounts_low
-- Accounts below their low-balance threshold, and at (or below) zero, for the
-- metrics. A full scan of user_credits: run on a timer, never per request.
SELECT count(*) FILTER (
           WHERE u.balance < credits_alert_threshold(u.low_balance_threshold, u.tier,
                                                     %(tiers)s::jsonb)) AS below_threshold,
       count(*) FILTER (WHERE u.balance <= 0) AS at_zero,
       count(*) FILTER (WHERE u.low_balance_alerted_at IS NOT NULL) AS alerted
  FROM user_credits u;

-- name: alerts_holds_in_flight
-- Holds of requests in flight, and ones past their expiry not yet swept.
SELECT count(*) FILTER (WHERE expires_at > now()) AS active,
       count(*) FILTER (WHERE expires_at <= now()) AS expired_unswept
  FROM credit_holds;
