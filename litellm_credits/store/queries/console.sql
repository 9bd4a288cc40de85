-- The admin console (api/console.py). Read-only; every change goes through the admin API.

-- name: console_accounts
-- Accounts whose user_id contains the search text (users and team:<id> wallets), by id.
SELECT u.user_id, u.balance, u.tier, u.power_level, u.updated_at,
       coalesce((SELECT sum(h.amount) FROM credit_holds h
                  WHERE h.user_id = u.user_id AND h.expires_at > now()), 0) AS held
  FROM user_credits u
 WHERE strpos(lower(u.user_id), lower(%(q)s)) > 0
 ORDER BY u.user_id
 LIMIT %(limit)s;

-- name: console_holds
SELECT request_id, amount, created_at, expires_at
  FROM credit_holds
 WHERE user_id = %(user_id)s AND expires_at > now()
 ORDER BY created_at DESC
 LIMIT 100;

-- name: console_refunds
SELECT id, user_id, amount, amount_usd, payment_intent_id, charge_id, description, created_at
  FROM credit_transactions
 WHERE transaction_type = 'refund'
 ORDER BY created_at DESC, id DESC
 LIMIT %(limit)s;

-- name: console_failed_webhooks
-- Low-balance alert webhooks that gave up (status 'failed') or are still retrying after errors.
SELECT id, user_id, kind, status, attempts, response_status, last_error, next_attempt_at,
       created_at
  FROM credit_alerts
 WHERE status = 'failed' OR (status = 'pending' AND attempts > 0)
 ORDER BY created_at DESC, id DESC
 LIMIT %(limit)s;
