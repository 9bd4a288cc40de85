-- Named queries of the /credits HTTP API (litellm_credits.api). Every name starts
-- with api_. Parameters are always bound, never formatted in. Money movements do
-- not live here: they go through the ledger functions (queries.sql).

-- name: api_package
-- One package, active or not, with its audit fields.
SELECT id, name, description, credits, price_usd, discount_percentage, badge, sort_order,
       is_active, stripe_price_id, updated_by, created_at, updated_at
  FROM credit_packages WHERE id = %(id)s;

-- name: api_package_insert
INSERT INTO credit_packages
       (name, description, credits, price_usd, discount_percentage, badge, stripe_price_id,
        is_active, sort_order, updated_by)
VALUES (%(name)s, %(description)s, %(credits)s, %(price_usd)s, %(discount_percentage)s,
        %(badge)s, %(stripe_price_id)s, %(is_active)s, %(sort_order)s, %(by)s)
RETURNING id, name, description, credits, price_usd, discount_percentage, badge, sort_order,
          is_active, stripe_price_id, updated_by, created_at, updated_at;

-- name: api_package_update
-- A partial update: each set_<field> flag says whether the field was given.
UPDATE credit_packages
   SET name = CASE WHEN %(set_name)s THEN %(name)s::text ELSE name END,
       description = CASE WHEN %(set_description)s THEN %(description)s::text
                          ELSE description END,
       credits = CASE WHEN %(set_credits)s THEN %(credits)s::numeric ELSE credits END,
       price_usd = CASE WHEN %(set_price_usd)s THEN %(price_usd)s::numeric ELSE price_usd END,
       discount_percentage = CASE WHEN %(set_discount_percentage)s
                                  THEN %(discount_percentage)s::numeric
                                  ELSE discount_percentage END,
       badge = CASE WHEN %(set_badge)s THEN %(badge)s::text ELSE badge END,
       stripe_price_id = CASE WHEN %(set_stripe_price_id)s THEN %(stripe_price_id)s::text
                              ELSE stripe_price_id END,
       is_active = CASE WHEN %(set_is_active)s THEN %(is_active)s::boolean ELSE is_active END,
       sort_order = CASE WHEN %(set_sort_order)s THEN %(sort_order)s::integer
                         ELSE sort_order END,
       updated_by = %(by)s
 WHERE id = %(id)s
RETURNING id, name, description, credits, price_usd, discount_percentage, badge, sort_order,
          is_active, stripe_price_id, updated_by, created_at, updated_at;

-- name: api_package_deactivate
UPDATE credit_packages SET is_active = FALSE, updated_by = %(by)s
 WHERE id = %(id)s
RETURNING id, name, description, credits, price_usd, discount_percentage, badge, sort_order,
          is_active, stripe_price_id, updated_by, created_at, updated_at;

-- name: api_usage_daily
-- The daily summary per model and provider, from the materialized view
-- usage_daily_summary (refreshed by the API at most once a minute per process).
-- A NULL user_id means every user (admins only). One row more than the limit is
-- asked for, so the caller can tell that the list was cut.
SELECT day, model, provider,
       sum(requests)::bigint AS requests, sum(successes)::bigint AS successes,
       sum(prompt_tokens)::bigint AS prompt_tokens,
       sum(completion_tokens)::bigint AS completion_tokens,
       sum(total_tokens)::bigint AS total_tokens,
       sum(provider_cost_usd) AS provider_cost_usd, sum(credits_charged) AS credits_charged
  FROM usage_daily_summary
 WHERE (%(user_id)s::text IS NULL OR user_id = %(user_id)s::text)
   AND day >= coalesce(%(since)s::date, '-infinity'::date)
   AND day <= coalesce(%(until)s::date, 'infinity'::date)
 GROUP BY 1, 2, 3
 ORDER BY 1 DESC, 2, 3
 LIMIT %(limit)s;

-- name: api_refunded_usd
-- Money already refunded for a purchase, to record each refund's own share.
SELECT coalesce(sum(t.amount_usd), 0) AS refunded_usd
  FROM credit_transactions t
 WHERE t.transaction_type = 'refund' AND t.payment_intent_id = %(payment_intent_id)s;
