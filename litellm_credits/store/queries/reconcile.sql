-- Named queries of `litellm-credits reconcile` (litellm_credits.reconcile). Every
-- name starts with reconcile_. Each check is ONE set-based statement over the
-- whole table (hash joins and one window sort, no per-row loops), so it stays
-- fast on millions of rows. Each returns at most %(limit)s example rows plus
-- the total number of findings in every row's "findings" column (count(*) OVER ()
-- is computed before LIMIT). Every check takes %(user_id)s: NULL checks
-- everyone, a user id narrows the check to that account.
--
-- All checks run in one REPEATABLE READ, READ ONLY transaction, so they see
-- one consistent snapshot even while proxies keep writing: every money
-- movement is a single transaction, so a snapshot never shows half of one.

-- name: reconcile_snapshot
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- name: reconcile_work_mem
-- Room for the hash joins and the window sort of a million rows in memory.
SET LOCAL work_mem = '128MB';

-- name: reconcile_balance_matches_ledger
-- I2: an account's balance equals the sum of its transactions. An account with
-- no transactions must be at 0; transactions without an account are a finding too.
WITH sums AS (
    SELECT t.user_id, sum(t.amount) AS ledger_sum, count(*) AS transactions
      FROM credit_transactions t
     WHERE (%(user_id)s::text IS NULL OR t.user_id = %(user_id)s)
     GROUP BY t.user_id
), accounts AS (
    SELECT u.user_id, u.balance
      FROM user_credits u
     WHERE (%(user_id)s::text IS NULL OR u.user_id = %(user_id)s)
), f AS MATERIALIZED (
    SELECT coalesce(a.user_id, s.user_id) AS user_id,
           a.balance,
           coalesce(s.ledger_sum, 0) AS ledger_sum,
           coalesce(s.transactions, 0) AS transactions
      FROM accounts a
      FULL JOIN sums s ON s.user_id = a.user_id
     WHERE a.balance IS DISTINCT FROM coalesce(s.ledger_sum, 0)
)
SELECT f.user_id, f.balance, f.ledger_sum, f.transactions, count(*) OVER () AS findings
  FROM f
 ORDER BY f.user_id
 LIMIT %(limit)s;

-- name: reconcile_chain
-- I2: in id order per user, each balance_before is the previous balance_after
-- (0 for the first), and balance_after = balance_before + amount.
WITH t AS (
    SELECT c.id, c.user_id, c.transaction_type, c.amount, c.balance_before, c.balance_after,
           lag(c.id) OVER w AS previous_id,
           coalesce(lag(c.balance_after) OVER w, 0) AS expected_before
      FROM credit_transactions c
     WHERE (%(user_id)s::text IS NULL OR c.user_id = %(user_id)s)
    WINDOW w AS (PARTITION BY c.user_id ORDER BY c.id)
), f AS MATERIALIZED (
    SELECT * FROM t
     WHERE t.balance_before <> t.expected_before
        OR t.balance_after <> t.balance_before + t.amount
)
SELECT f.id AS transaction_id, f.user_id, f.transaction_type, f.amount, f.balance_before,
       f.expected_before, f.balance_after, f.previous_id, count(*) OVER () AS findings
  FROM f
 ORDER BY f.user_id, f.id
 LIMIT %(limit)s;

-- name: reconcile_usage_debited_once
-- I1: every successful usage row has exactly one usage debit, of the same user,
-- whose -amount + credits_uncollected equals the row's credits_charged. One
-- hash join pairs rows with debits; request ids with two debits come from a
-- cheap count over the (transaction_type, idempotency_key) index. The unique
-- index makes that impossible today, but reconcile must not assume what it checks.
WITH dup AS (
    SELECT t.idempotency_key
      FROM credit_transactions t
     WHERE t.transaction_type = 'usage'
       AND (%(user_id)s::text IS NULL OR t.user_id = %(user_id)s)
     GROUP BY t.idempotency_key
    HAVING count(*) > 1
), pairs AS (
    SELECT l.request_id, l.user_id, l.credits_charged, t.id AS transaction_id,
           -t.amount AS debited, t.credits_uncollected AS uncollected, t.user_id AS debit_user
      FROM llm_usage_log l
      LEFT JOIN credit_transactions t
        ON t.transaction_type = 'usage' AND t.idempotency_key = l.request_id
     WHERE l.success
       AND (%(user_id)s::text IS NULL OR l.user_id = %(user_id)s)
), f AS MATERIALIZED (
    SELECT p.request_id, p.user_id, p.credits_charged, count(p.transaction_id) AS debits,
           sum(p.debited) AS debited, sum(p.uncollected) AS uncollected,
           min(p.debit_user) AS debit_user
      FROM pairs p
     WHERE p.transaction_id IS NULL
        OR p.debited + p.uncollected <> p.credits_charged
        OR p.debit_user <> p.user_id
        OR p.request_id IN (SELECT dup.idempotency_key FROM dup)
     GROUP BY p.request_id, p.user_id, p.credits_charged
)
SELECT f.request_id, f.user_id, f.credits_charged, f.debits, f.debited, f.uncollected,
       f.debit_user, count(*) OVER () AS findings
  FROM f
 ORDER BY f.user_id, f.request_id
 LIMIT %(limit)s;

-- name: reconcile_debit_has_usage_row
-- I1: no usage debit without a successful usage row for its request (a debit
-- of a failed request, or of a request that was never logged).
WITH f AS MATERIALIZED (
    SELECT t.id, t.user_id, t.idempotency_key, t.amount, t.created_at,
           l.request_id IS NOT NULL AS failure_row_exists
      FROM credit_transactions t
      LEFT JOIN llm_usage_log l ON l.request_id = t.idempotency_key
     WHERE t.transaction_type = 'usage'
       AND (%(user_id)s::text IS NULL OR t.user_id = %(user_id)s)
       AND (l.request_id IS NULL OR NOT l.success)
)
SELECT f.id AS transaction_id, f.user_id, f.idempotency_key AS request_id, f.amount,
       f.failure_row_exists, f.created_at, count(*) OVER () AS findings
  FROM f
 ORDER BY f.user_id, f.id
 LIMIT %(limit)s;

-- name: reconcile_expired_holds
-- I3 housekeeping: holds past their expiry (plus a grace for the sweeper's
-- interval) should have been swept; holds of requests that are already
-- settled should have been released in the settling transaction.
WITH f AS MATERIALIZED (
    SELECT h.request_id, h.user_id, h.amount, h.created_at, h.expires_at,
           CASE WHEN l.request_id IS NOT NULL THEN 'settled but still held'
                ELSE 'expired' END AS problem
      FROM credit_holds h
      LEFT JOIN llm_usage_log l ON l.request_id = h.request_id
     WHERE (%(user_id)s::text IS NULL OR h.user_id = %(user_id)s)
       AND (h.expires_at < now() - make_interval(secs => %(grace_seconds)s)
            OR l.request_id IS NOT NULL)
)
SELECT f.request_id, f.user_id, f.amount, f.problem, f.created_at, f.expires_at,
       count(*) OVER () AS findings
  FROM f
 ORDER BY f.expires_at, f.request_id
 LIMIT %(limit)s;

-- name: reconcile_unsettled_holds
-- I1: a hold whose request began more than %(stale_seconds)s ago and still has no
-- usage row, while the hold is not yet expired (expired ones are the check above).
-- No request runs that long, so it was served and its settlement never arrived, or
-- its proxy died mid-request; the database cannot tell those two apart, the proxy
-- log and the spool's rejected/ folder can. Must be found before the sweeper
-- deletes the hold at expiry (hold_ttl_seconds, 900 s by default): after that,
-- nothing in the database remembers the request.
WITH f AS MATERIALIZED (
    SELECT h.request_id, h.user_id, h.amount, h.created_at, h.expires_at,
           floor(extract(epoch FROM now() - h.created_at))::bigint AS age_seconds
      FROM credit_holds h
     WHERE (%(user_id)s::text IS NULL OR h.user_id = %(user_id)s)
       AND h.created_at < now() - make_interval(secs => %(stale_seconds)s)
       AND h.expires_at >= now() - make_interval(secs => %(grace_seconds)s)
       AND NOT EXISTS (SELECT 1 FROM llm_usage_log l WHERE l.request_id = h.request_id)
)
SELECT f.request_id, f.user_id, f.amount, f.age_seconds, f.created_at, f.expires_at,
       count(*) OVER () AS findings
  FROM f
 ORDER BY f.created_at, f.request_id
 LIMIT %(limit)s;

-- name: reconcile_negative_balance
-- Usage never takes a balance below zero (the excess is credits_uncollected);
-- only a refund of a purchase may. So a negative balance, on the account or
-- after any transaction, needs a refund at or before that point in the history.
WITH t AS (
    SELECT c.id, c.user_id, c.transaction_type, c.balance_after,
           bool_or(c.transaction_type = 'refund') OVER (
               PARTITION BY c.user_id ORDER BY c.id ROWS UNBOUNDED PRECEDING) AS refunded
      FROM credit_transactions c
     WHERE (%(user_id)s::text IS NULL OR c.user_id = %(user_id)s)
), f AS MATERIALIZED (
    SELECT t.user_id, t.id AS transaction_id, t.transaction_type, t.balance_after AS balance
      FROM t
     WHERE t.balance_after < 0 AND NOT t.refunded
    UNION ALL
    SELECT u.user_id, NULL, 'account', u.balance
      FROM user_credits u
     WHERE u.balance < 0
       AND (%(user_id)s::text IS NULL OR u.user_id = %(user_id)s)
       AND NOT EXISTS (SELECT 1 FROM credit_transactions r
                        WHERE r.user_id = u.user_id AND r.transaction_type = 'refund')
)
SELECT f.user_id, f.transaction_id, f.transaction_type, f.balance, count(*) OVER () AS findings
  FROM f
 ORDER BY f.user_id, f.transaction_id NULLS LAST
 LIMIT %(limit)s;

-- name: reconcile_totals
-- Context for the operator, never a failure: sizes, what is in flight, and how
-- much usage went uncollected (requests served beyond a balance: the I3 bound).
SELECT (SELECT count(*) FROM user_credits u
         WHERE (%(user_id)s::text IS NULL OR u.user_id = %(user_id)s)) AS accounts,
       (SELECT count(*) FROM credit_transactions t
         WHERE (%(user_id)s::text IS NULL OR t.user_id = %(user_id)s)) AS transactions,
       (SELECT count(*) FROM llm_usage_log l
         WHERE (%(user_id)s::text IS NULL OR l.user_id = %(user_id)s)) AS usage_rows,
       (SELECT count(*) FROM credit_holds h
         WHERE (%(user_id)s::text IS NULL OR h.user_id = %(user_id)s)
           AND h.expires_at > now()) AS active_holds,
       (SELECT coalesce(sum(t.credits_uncollected), 0) FROM credit_transactions t
         WHERE t.transaction_type = 'usage'
           AND (%(user_id)s::text IS NULL OR t.user_id = %(user_id)s)) AS credits_uncollected;
