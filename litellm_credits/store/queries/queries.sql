-- Named queries, referred to by name from Python (litellm_credits.db.query).
-- Parameters are always bound, never formatted in.

-- name: set_statement_timeout
-- Lasts until the end of the current transaction, so it survives a transaction-mode
-- pooler. Bound on the client (SET takes no server-side parameter); db.py sends it in
-- the same message as a single statement, which makes the two one implicit transaction.
SET LOCAL statement_timeout = %(credits_statement_timeout_ms)s;

-- name: add_credits
SELECT success, new_balance, transaction_id
  FROM add_user_credits(%(user_id)s, %(amount)s, %(type)s, %(payment_id)s, %(description)s,
                        %(created_by)s, %(metadata)s, %(package_id)s, %(charge_id)s,
                        %(amount_usd)s, %(stripe_event_id)s);

-- name: debit_credits
SELECT success, new_balance, transaction_id
  FROM debit_user_credits(%(user_id)s, %(amount)s, %(type)s, %(request_id)s, %(description)s,
                          %(created_by)s, %(metadata)s);

-- name: refund_purchase
SELECT success, new_balance, transaction_id, refunded
  FROM refund_purchase(%(payment_intent_id)s, %(target_credits)s, %(charge_id)s,
                       %(stripe_event_id)s, %(amount_usd)s);

-- name: purchase_by_payment_intent
SELECT id, user_id, amount, amount_usd, package_id, charge_id
  FROM credit_transactions
 WHERE transaction_type = 'purchase' AND idempotency_key = %(payment_intent_id)s;

-- name: reserve
SELECT status, power_level, cost_multiplier, hold_amount, balance, held, tier,
       monthly_quota, quota_used, byok_keys
  FROM reserve_credits(%(user_id)s, %(request_id)s, %(base_amount)s, %(level)s,
                       %(ttl)s::integer);

-- name: reserve_many
SELECT ord, status, power_level, cost_multiplier, hold_amount, balance, held, tier,
       monthly_quota, quota_used, byok_keys, err_state, err_message, err_hint
  FROM reserve_credits_many(%(items)s::jsonb);

-- name: release_hold
SELECT release_hold(%(request_id)s) AS released;

-- name: sweep_expired_holds
SELECT sweep_expired_holds() AS expired;

-- name: settle_usage
SELECT request_id, user_id, outcome, debited FROM settle_usage(%(records)s);

-- name: account
SELECT u.user_id, u.balance, u.tier, u.power_level, u.level_override_allowed,
       u.monthly_quota, u.low_balance_threshold, u.updated_by, u.created_at, u.updated_at,
       coalesce((SELECT sum(h.amount) FROM credit_holds h
                  WHERE h.user_id = u.user_id AND h.expires_at > now()), 0) AS held,
       get_quota_usage_percentage(u.user_id) AS quota_used_pct
  FROM user_credits u
 WHERE u.user_id = %(user_id)s;

-- name: transactions
SELECT id, transaction_type, amount, balance_before, balance_after, request_id,
       payment_intent_id, charge_id, package_id, amount_usd, credits_uncollected,
       description, created_by, created_at
  FROM credit_transactions
 WHERE user_id = %(user_id)s
   AND created_at >= coalesce(%(since)s::timestamptz, '-infinity')
   AND created_at < coalesce(%(until)s::timestamptz, 'infinity')
 ORDER BY id DESC
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: usage_rows
SELECT request_id, user_id, model, model_group, provider, power_level,
       byok_key_id IS NOT NULL AS is_byok, prompt_tokens, completion_tokens, cached_tokens,
       total_tokens, provider_cost_usd, credits_charged, cost_multiplier, latency_ms,
       time_to_first_token_ms, success, status_code, error_type, app_id, session_id, created_at
  FROM llm_usage_log
 WHERE (%(user_id)s::text IS NULL OR user_id = %(user_id)s)
   AND created_at >= coalesce(%(since)s::timestamptz, '-infinity')
   AND created_at < coalesce(%(until)s::timestamptz, 'infinity')
 ORDER BY created_at DESC, id DESC
 LIMIT %(limit)s OFFSET %(offset)s;

-- name: usage_summary
-- Straight from the log, so it is current; the API also offers the materialized view.
SELECT (created_at AT TIME ZONE 'UTC')::date AS day, coalesce(model, '') AS model,
       coalesce(provider, '') AS provider, count(*) AS requests,
       count(*) FILTER (WHERE success) AS successes, sum(total_tokens)::bigint AS total_tokens,
       sum(provider_cost_usd) AS provider_cost_usd, sum(credits_charged) AS credits_charged
  FROM llm_usage_log
 WHERE (%(user_id)s::text IS NULL OR user_id = %(user_id)s)
   AND created_at >= coalesce(%(since)s::timestamptz, '-infinity')
   AND created_at < coalesce(%(until)s::timestamptz, 'infinity')
 GROUP BY 1, 2, 3
 ORDER BY 1 DESC, 8 DESC;

-- name: refresh_usage_summary
SELECT refresh_usage_summary();

-- name: set_power_level
UPDATE user_credits SET power_level = %(level)s, updated_by = %(by)s
 WHERE user_id = %(user_id)s
RETURNING user_id, power_level;

-- name: set_tier
UPDATE user_credits
   SET tier = %(tier)s, monthly_quota = %(monthly_quota)s,
       low_balance_threshold = %(low_balance_threshold)s, updated_by = %(by)s
 WHERE user_id = %(user_id)s
RETURNING user_id, tier, monthly_quota, low_balance_threshold;

-- name: power_levels
SELECT power_level, display_name, description, cost_multiplier, max_latency_ms,
       min_quality_score, preferred_providers
  FROM power_level_configs ORDER BY id;

-- name: settings
SELECT key, value FROM credit_settings;

-- name: put_setting
INSERT INTO credit_settings (key, value, updated_by) VALUES (%(key)s, %(value)s, %(by)s)
ON CONFLICT (key) DO UPDATE
   SET value = EXCLUDED.value, updated_by = EXCLUDED.updated_by, updated_at = now();

-- name: latency_since
-- Latency of successful requests per deployment (model_info.id) and minute, over the
-- usage rows after %(after_id)s that fall in the window (litellm_credits.latency keeps
-- the running sums, so a refresh reads only the rows since the last one).
SELECT model_group, response_metadata->>'deployment_id' AS deployment_id,
       floor(extract(epoch FROM created_at) / 60)::bigint AS minute,
       sum(latency_ms)::bigint AS total_ms, count(*) AS n, max(id) AS last_id
  FROM llm_usage_log
 WHERE id > %(after_id)s
   AND created_at > now() - make_interval(secs => %(window_seconds)s)
   AND success AND latency_ms IS NOT NULL AND model_group IS NOT NULL
 GROUP BY 1, 2, 3;

-- name: packages_active
SELECT id, name, description, credits, price_usd, discount_percentage, badge, sort_order
  FROM credit_packages WHERE is_active ORDER BY sort_order, id;

-- name: packages_all
SELECT id, name, description, credits, price_usd, discount_percentage, badge, sort_order,
       is_active, stripe_price_id, updated_by, updated_at
  FROM credit_packages ORDER BY sort_order, id;
