-- 0003: batch settlement, refunds of purchases, and the daily usage summary.

-- settle_usage ----------------------------------------------------------------
-- Settles a batch of finished requests in one statement per step, for many
-- users at once. It follows debit_user_credits' rules for usage exactly: one
-- llm_usage_log row and, for a success, one usage debit per request id
-- (invariant I1), capped at the balance with the rest in credits_uncollected;
-- the request's hold is released either way.
--
-- Duplicates are harmless: a request id already logged is skipped, except that
-- a success replaces an earlier failure row for the same request (a retried
-- request that failed on one deployment and succeeded on another). A failure
-- after a success changes nothing.
--
-- p_records is a JSON array of objects with the llm_usage_log columns; money
-- travels as JSON strings or numbers, both exact for NUMERIC.
-- outcome: 'debited' | 'failure_logged' | 'duplicate'.
CREATE FUNCTION settle_usage(p_records JSONB)
RETURNS TABLE (request_id TEXT, user_id TEXT, outcome TEXT, debited NUMERIC)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_month DATE := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
BEGIN
    IF p_records IS NULL OR jsonb_typeof(p_records) <> 'array' THEN
        RAISE EXCEPTION 'settle_usage expects a JSON array' USING ERRCODE = 'CR006';
    END IF;

    -- Refuse the whole batch on one malformed record (the writer isolates it):
    -- a NaN would otherwise pass "credits_charged >= 0" and poison a balance.
    IF EXISTS (
        SELECT 1 FROM jsonb_to_recordset(p_records)
                      AS r(request_id TEXT, user_id TEXT, credits_charged NUMERIC)
         WHERE r.request_id IS NULL OR length(r.request_id) NOT BETWEEN 1 AND 255
            OR r.user_id IS NULL OR length(r.user_id) NOT BETWEEN 1 AND 255
            OR r.user_id ~ '[[:cntrl:]]'
            OR NOT (coalesce(r.credits_charged, 0) BETWEEN 0 AND 1000000000)
            OR coalesce(r.credits_charged, 0) <> round(coalesce(r.credits_charged, 0), 8)) THEN
        RAISE EXCEPTION 'settle_usage: a record has a bad request id, user id or charge'
            USING ERRCODE = 'CR001';
    END IF;

    -- A served request is always billed, so make sure the account row exists,
    -- then lock every account of the batch in user_id order.
    INSERT INTO user_credits (user_id)
    SELECT DISTINCT r.user_id FROM jsonb_to_recordset(p_records) AS r(user_id TEXT, success BOOLEAN)
     WHERE r.success
    ORDER BY 1
    ON CONFLICT (user_id) DO NOTHING;

    PERFORM 1 FROM user_credits u
     WHERE u.user_id IN (SELECT DISTINCT r.user_id
                           FROM jsonb_to_recordset(p_records) AS r(user_id TEXT))
     ORDER BY u.user_id FOR UPDATE;

    RETURN QUERY
    WITH r AS (
        SELECT DISTINCT ON (x.request_id) x.*
          FROM ROWS FROM (jsonb_to_recordset(p_records) AS (
               request_id TEXT, user_id TEXT, model TEXT, model_group TEXT, provider TEXT,
               api_base TEXT, power_level TEXT, byok_key_id BIGINT, prompt_tokens INTEGER,
               completion_tokens INTEGER, cached_tokens INTEGER, total_tokens INTEGER,
               provider_cost_usd NUMERIC, credits_charged NUMERIC, cost_multiplier NUMERIC,
               latency_ms INTEGER, time_to_first_token_ms INTEGER, success BOOLEAN,
               status_code INTEGER, error_type TEXT, error_message TEXT, app_id TEXT,
               session_id TEXT, request_metadata JSONB, response_metadata JSONB,
               created_at TIMESTAMPTZ)) WITH ORDINALITY AS x(
               request_id, user_id, model, model_group, provider, api_base, power_level,
               byok_key_id, prompt_tokens, completion_tokens, cached_tokens, total_tokens,
               provider_cost_usd, credits_charged, cost_multiplier, latency_ms,
               time_to_first_token_ms, success, status_code, error_type, error_message, app_id,
               session_id, request_metadata, response_metadata, created_at, ord)
         ORDER BY x.request_id, x.success DESC, x.ord
    ),
    ins AS (
        INSERT INTO llm_usage_log AS l (
            request_id, user_id, model, model_group, provider, api_base, power_level,
            byok_key_id, prompt_tokens, completion_tokens, cached_tokens, total_tokens,
            provider_cost_usd, credits_charged, cost_multiplier, latency_ms,
            time_to_first_token_ms, success, status_code, error_type, error_message, app_id,
            session_id, request_metadata, response_metadata, created_at)
        SELECT r.request_id, r.user_id, r.model, r.model_group, r.provider, r.api_base,
               r.power_level, r.byok_key_id, coalesce(r.prompt_tokens, 0),
               coalesce(r.completion_tokens, 0), coalesce(r.cached_tokens, 0),
               coalesce(r.total_tokens, 0), coalesce(r.provider_cost_usd, 0),
               CASE WHEN r.success THEN coalesce(r.credits_charged, 0) ELSE 0 END,
               r.cost_multiplier, r.latency_ms, r.time_to_first_token_ms, r.success,
               r.status_code, r.error_type, r.error_message, r.app_id, r.session_id,
               coalesce(r.request_metadata, '{}'::jsonb),
               coalesce(r.response_metadata, '{}'::jsonb), coalesce(r.created_at, now())
          FROM r
        ON CONFLICT (request_id) DO UPDATE SET
            model = EXCLUDED.model, model_group = EXCLUDED.model_group,
            provider = EXCLUDED.provider, api_base = EXCLUDED.api_base,
            power_level = EXCLUDED.power_level, byok_key_id = EXCLUDED.byok_key_id,
            prompt_tokens = EXCLUDED.prompt_tokens, completion_tokens = EXCLUDED.completion_tokens,
            cached_tokens = EXCLUDED.cached_tokens, total_tokens = EXCLUDED.total_tokens,
            provider_cost_usd = EXCLUDED.provider_cost_usd,
            credits_charged = EXCLUDED.credits_charged, cost_multiplier = EXCLUDED.cost_multiplier,
            latency_ms = EXCLUDED.latency_ms,
            time_to_first_token_ms = EXCLUDED.time_to_first_token_ms, success = TRUE,
            status_code = EXCLUDED.status_code, error_type = NULL,
            error_message = NULL, response_metadata = EXCLUDED.response_metadata
          WHERE NOT l.success AND EXCLUDED.success AND l.user_id = EXCLUDED.user_id
        RETURNING l.request_id, l.user_id, l.success, l.credits_charged, l.byok_key_id,
                  l.created_at
    ),
    -- The chain is ordered by the usage row's time and request id (both come back
    -- from the INSERT), not by joining back to the input: with jsonb_to_recordset's
    -- row estimates that join became a nested loop over the batch squared. The
    -- already-debited check is a per-row index probe (LATERAL ... LIMIT 1); as
    -- NOT EXISTS it was planned as an anti join over the whole usage ledger
    -- whenever the statistics were stale (bench/results/experiments.json, F3).
    deb AS (
        SELECT i.request_id, i.user_id, i.credits_charged, i.created_at, u.balance AS b0,
               sum(i.credits_charged) OVER (
                   PARTITION BY i.user_id ORDER BY i.created_at, i.request_id
                   ROWS UNBOUNDED PRECEDING) AS s_incl,
               sum(i.credits_charged) OVER (PARTITION BY i.user_id) AS s_total
          FROM ins i
          JOIN user_credits u ON u.user_id = i.user_id
          LEFT JOIN LATERAL (
              SELECT 1 AS found FROM credit_transactions t
               WHERE t.transaction_type = 'usage' AND t.idempotency_key = i.request_id
               LIMIT 1) seen ON TRUE
         WHERE i.success AND seen.found IS NULL
    ),
    -- With balance b0 >= 0 and costs c_i >= 0, "take at most what is there"
    -- gives balance_i = max(0, b0 - prefix_sum_i); a negative b0 (after a
    -- refund) takes nothing and stays where it is.
    chain AS (
        SELECT d.*,
               CASE WHEN d.b0 < 0 THEN d.b0
                    ELSE greatest(0, d.b0 - (d.s_incl - d.credits_charged)) END AS bal_before,
               CASE WHEN d.b0 < 0 THEN d.b0 ELSE greatest(0, d.b0 - d.s_incl) END AS bal_after
          FROM deb d
    ),
    tx AS (
        INSERT INTO credit_transactions (
            user_id, transaction_type, amount, balance_before, balance_after, idempotency_key,
            request_id, credits_uncollected, description)
        SELECT c.user_id, 'usage', c.bal_after - c.bal_before, c.bal_before, c.bal_after,
               c.request_id, c.request_id,
               c.credits_charged - (c.bal_before - c.bal_after), 'LLM usage'
          FROM chain c
         ORDER BY c.user_id, c.created_at, c.request_id
        RETURNING credit_transactions.request_id, credit_transactions.amount
    ),
    acc AS (
        UPDATE user_credits u
           SET balance = f.final_balance,
               monthly_usage = CASE WHEN u.quota_period_start = v_month
                                    THEN u.monthly_usage + f.used ELSE f.used END,
               quota_period_start = v_month
          FROM (SELECT c.user_id,
                       CASE WHEN min(c.b0) < 0 THEN min(c.b0)
                            ELSE greatest(0, min(c.b0) - min(c.s_total)) END AS final_balance,
                       min(c.s_total) AS used
                  FROM chain c GROUP BY c.user_id) f
         WHERE u.user_id = f.user_id
        RETURNING u.user_id
    ),
    released AS (
        DELETE FROM credit_holds h USING r WHERE h.request_id = r.request_id
        RETURNING h.request_id
    ),
    key_use AS (
        UPDATE user_provider_keys k
           SET usage_count = k.usage_count + n.uses, last_used_at = now()
          FROM (SELECT i.byok_key_id, count(*) AS uses FROM ins i
                 WHERE i.success AND i.byok_key_id IS NOT NULL GROUP BY i.byok_key_id) n
         WHERE k.id = n.byok_key_id
        RETURNING k.id
    )
    SELECT r.request_id, r.user_id,
           CASE WHEN tx.request_id IS NOT NULL THEN 'debited'
                WHEN i.request_id IS NOT NULL AND NOT i.success THEN 'failure_logged'
                ELSE 'duplicate' END,
           coalesce(-tx.amount, 0)
      FROM r
      LEFT JOIN ins i ON i.request_id = r.request_id
      LEFT JOIN tx ON tx.request_id = r.request_id
     ORDER BY r.ord;
END;
$$;

-- refund_purchase -------------------------------------------------------------
-- Takes back credits for a (partly) refunded purchase. p_target_credits is the
-- cumulative amount that should have been taken back for this payment so far;
-- only the difference to what earlier refunds took is debited. A replayed or
-- out-of-order event therefore moves nothing twice. May leave a negative balance.
CREATE FUNCTION refund_purchase(
    p_payment_intent_id TEXT,
    p_target_credits NUMERIC,
    p_charge_id TEXT,
    p_stripe_event_id TEXT,
    p_amount_usd NUMERIC
) RETURNS TABLE (success BOOLEAN, new_balance NUMERIC, transaction_id BIGINT, refunded NUMERIC)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_purchase credit_transactions%ROWTYPE;
    v_before NUMERIC;
    v_done NUMERIC;
    v_delta NUMERIC;
    v_id BIGINT;
BEGIN
    PERFORM credits_check_amount(p_target_credits, TRUE);
    SELECT * INTO v_purchase FROM credit_transactions t
     WHERE t.transaction_type = 'purchase' AND t.idempotency_key = p_payment_intent_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no purchase recorded for payment %', p_payment_intent_id
            USING ERRCODE = 'CR008';
    END IF;
    IF p_target_credits > v_purchase.amount THEN
        RAISE EXCEPTION 'cannot take back % credits; the purchase added %',
            p_target_credits, v_purchase.amount USING ERRCODE = 'CR001';
    END IF;

    v_before := credits_lock_account(v_purchase.user_id, FALSE);
    SELECT coalesce(-sum(t.amount), 0) INTO v_done FROM credit_transactions t
     WHERE t.transaction_type = 'refund' AND t.related_transaction_id = v_purchase.id;
    v_delta := p_target_credits - v_done;
    IF v_delta <= 0 THEN
        RETURN QUERY SELECT TRUE, v_before, NULL::BIGINT, 0::NUMERIC;
        RETURN;
    END IF;

    INSERT INTO credit_transactions (
        user_id, transaction_type, amount, balance_before, balance_after, idempotency_key,
        payment_intent_id, charge_id, stripe_event_id, amount_usd, currency,
        related_transaction_id, description)
    VALUES (
        v_purchase.user_id, 'refund', -v_delta, v_before, v_before - v_delta,
        p_payment_intent_id || ':' || p_target_credits::text, p_payment_intent_id,
        coalesce(p_charge_id, v_purchase.charge_id), p_stripe_event_id, p_amount_usd,
        CASE WHEN p_amount_usd IS NOT NULL THEN 'usd' END, v_purchase.id,
        'Stripe refund')
    RETURNING id INTO v_id;
    UPDATE user_credits SET balance = v_before - v_delta WHERE user_id = v_purchase.user_id;
    RETURN QUERY SELECT TRUE, v_before - v_delta, v_id, v_delta;
END;
$$;

-- Daily usage summary -------------------------------------------------------------
-- The report's refresh_usage_summary() was a placeholder; this is the view it
-- refreshes. The unique index is what REFRESH ... CONCURRENTLY needs.
CREATE MATERIALIZED VIEW usage_daily_summary AS
SELECT (created_at AT TIME ZONE 'UTC')::date AS day,
       user_id,
       coalesce(model, '') AS model,
       coalesce(provider, '') AS provider,
       count(*) AS requests,
       count(*) FILTER (WHERE success) AS successes,
       sum(prompt_tokens)::bigint AS prompt_tokens,
       sum(completion_tokens)::bigint AS completion_tokens,
       sum(total_tokens)::bigint AS total_tokens,
       sum(provider_cost_usd) AS provider_cost_usd,
       sum(credits_charged) AS credits_charged
  FROM llm_usage_log
 GROUP BY 1, 2, 3, 4;
CREATE UNIQUE INDEX usage_daily_summary_key
    ON usage_daily_summary (day, user_id, model, provider);

CREATE FUNCTION refresh_usage_summary() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    REFRESH MATERIALIZED VIEW CONCURRENTLY usage_daily_summary;
END;
$$;
