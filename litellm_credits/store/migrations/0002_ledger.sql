-- 0002: the ledger. Holds, settings, and the functions that move money.
--
-- Every money movement locks the account row first, then writes exactly one
-- credit_transactions row whose balance_before/balance_after chain onto the
-- previous one (invariant I2). Ids are drawn after the lock, so id order is
-- chain order. Several accounts are always locked in user_id order, so
-- concurrent calls cannot deadlock.
--
-- Our own SQLSTATEs (class CR), translated to Python in litellm_credits.db:
--   CR001 invalid amount        CR002 invalid user id     CR003 invalid transaction type
--   CR004 invalid power level   CR005 account not found   CR006 invalid argument
--   CR007 level not allowed     CR008 not found

-- Holds for requests in flight (support table) --------------------------------
-- A row exists only while its request is in flight. Rows past expires_at no
-- longer count against the balance, so a proxy that died mid-request cannot
-- lock credits forever; sweep_expired_holds() deletes them.
CREATE TABLE credit_holds (
    request_id  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    amount      NUMERIC(20, 8) NOT NULL CHECK (amount >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_credit_holds_user ON credit_holds (user_id, expires_at);
CREATE INDEX idx_credit_holds_expires_at ON credit_holds (expires_at);

-- Shared settings every replica reads within seconds (support table) --------
CREATE TABLE credit_settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_by  TEXT,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Validation ----------------------------------------------------------------
CREATE FUNCTION credits_check_user_id(p_user_id TEXT) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_user_id IS NULL OR length(p_user_id) = 0 THEN
        RAISE EXCEPTION 'user id is empty; pass the LiteLLM user id'
            USING ERRCODE = 'CR002';
    END IF;
    IF length(p_user_id) > 255 THEN
        RAISE EXCEPTION 'user id is % characters long; the limit is 255', length(p_user_id)
            USING ERRCODE = 'CR002';
    END IF;
    IF p_user_id ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'user id contains control characters'
            USING ERRCODE = 'CR002';
    END IF;
END;
$$;

-- An amount of credits: positive (or zero when p_allow_zero), finite, at most
-- one billion, with no more than 8 decimal places. NaN fails "<= 1e9".
CREATE FUNCTION credits_check_amount(p_amount NUMERIC, p_allow_zero BOOLEAN DEFAULT FALSE)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_amount IS NULL THEN
        RAISE EXCEPTION 'amount is missing' USING ERRCODE = 'CR001';
    END IF;
    IF NOT (p_amount <= 1000000000) THEN
        RAISE EXCEPTION 'amount % is too large or not a number; the limit is 1000000000 credits',
            p_amount USING ERRCODE = 'CR001';
    END IF;
    IF p_amount < 0 OR (p_amount = 0 AND NOT p_allow_zero) THEN
        RAISE EXCEPTION 'amount must be positive, got %', p_amount USING ERRCODE = 'CR001';
    END IF;
    IF p_amount <> round(p_amount, 8) THEN
        RAISE EXCEPTION 'amount % has more than 8 decimal places', p_amount
            USING ERRCODE = 'CR001';
    END IF;
END;
$$;

CREATE FUNCTION credits_check_text(p_name TEXT, p_value TEXT, p_max INTEGER) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_value IS NOT NULL AND length(p_value) > p_max THEN
        RAISE EXCEPTION '% is % characters long; the limit is %', p_name, length(p_value), p_max
            USING ERRCODE = 'CR006';
    END IF;
END;
$$;

-- Lock an account, creating it on first use when asked. Returns the balance.
CREATE FUNCTION credits_lock_account(p_user_id TEXT, p_create BOOLEAN) RETURNS NUMERIC
LANGUAGE plpgsql AS $$
DECLARE
    v_balance NUMERIC;
BEGIN
    IF p_create THEN
        INSERT INTO user_credits (user_id) VALUES (p_user_id) ON CONFLICT (user_id) DO NOTHING;
    END IF;
    SELECT balance INTO v_balance FROM user_credits WHERE user_id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no credit account for user %', p_user_id
            USING ERRCODE = 'CR005',
                  HINT = 'grant credits first: litellm-credits grant USER AMOUNT';
    END IF;
    RETURN v_balance;
END;
$$;

-- An idempotency key belongs to the account that first used it: a repeat from
-- another account is refused rather than answered with someone else's row.
CREATE FUNCTION credits_check_key_owner(p_type TEXT, p_key TEXT, p_user_id TEXT) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM credit_transactions t
                WHERE t.transaction_type = p_type AND t.idempotency_key = p_key
                  AND t.user_id <> p_user_id) THEN
        RAISE EXCEPTION 'the % key % was already used by another account', p_type, p_key
            USING ERRCODE = 'CR006';
    END IF;
END;
$$;

-- add_user_credits ----------------------------------------------------------
-- Credits an account, creating it on first use. Idempotent on p_payment_id:
-- a repeat returns the original transaction and moves nothing.
CREATE FUNCTION add_user_credits(
    p_user_id TEXT,
    p_amount NUMERIC,
    p_type TEXT,
    p_payment_id TEXT,
    p_description TEXT,
    p_created_by TEXT DEFAULT NULL,
    p_metadata JSONB DEFAULT NULL,
    p_package_id INTEGER DEFAULT NULL,
    p_charge_id TEXT DEFAULT NULL,
    p_amount_usd NUMERIC DEFAULT NULL,
    p_stripe_event_id TEXT DEFAULT NULL
) RETURNS TABLE (success BOOLEAN, new_balance NUMERIC, transaction_id BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_before NUMERIC;
    v_id BIGINT;
BEGIN
    PERFORM credits_check_user_id(p_user_id);
    PERFORM credits_check_amount(p_amount);
    IF p_type IS NULL OR p_type NOT IN ('purchase', 'bonus', 'admin_adjustment') THEN
        RAISE EXCEPTION 'transaction type % cannot add credits; use purchase, bonus or admin_adjustment',
            coalesce(quote_literal(p_type), 'NULL') USING ERRCODE = 'CR003';
    END IF;
    PERFORM credits_check_text('payment id', p_payment_id, 255);
    PERFORM credits_check_text('description', p_description, 1000);
    PERFORM credits_check_text('created_by', p_created_by, 255);
    IF p_payment_id = '' THEN
        RAISE EXCEPTION 'payment id is empty; pass NULL for none' USING ERRCODE = 'CR006';
    END IF;

    v_before := credits_lock_account(p_user_id, TRUE);

    IF p_payment_id IS NOT NULL THEN
        PERFORM credits_check_key_owner(p_type, p_payment_id, p_user_id);
        SELECT t.id INTO v_id FROM credit_transactions t
         WHERE t.transaction_type = p_type AND t.idempotency_key = p_payment_id;
        IF FOUND THEN
            RETURN QUERY SELECT TRUE, v_before, v_id;
            RETURN;
        END IF;
    END IF;

    INSERT INTO credit_transactions (
        user_id, transaction_type, amount, balance_before, balance_after, idempotency_key,
        payment_intent_id, charge_id, stripe_event_id, package_id, amount_usd, currency,
        description, metadata, created_by)
    VALUES (
        p_user_id, p_type, p_amount, v_before, v_before + p_amount, p_payment_id,
        CASE WHEN p_type = 'purchase' THEN p_payment_id END, p_charge_id, p_stripe_event_id,
        p_package_id, p_amount_usd, CASE WHEN p_amount_usd IS NOT NULL THEN 'usd' END,
        p_description, coalesce(p_metadata, '{}'::jsonb), p_created_by)
    RETURNING id INTO v_id;

    UPDATE user_credits SET balance = v_before + p_amount WHERE user_id = p_user_id;
    RETURN QUERY SELECT TRUE, v_before + p_amount, v_id;
END;
$$;

-- debit_user_credits --------------------------------------------------------
-- Takes credits from an existing account. Idempotent on p_request_id.
--   usage            the request was already served, so it is always recorded:
--                    the debit takes what the balance holds, at most the cost,
--                    and the rest is written to credits_uncollected. The
--                    balance never goes below zero through usage. Settles the
--                    request's hold.
--   refund           may leave a negative balance; that blocks further use
--                    until the account is topped up.
--   admin_adjustment refused (success = false, nothing written) when the
--                    balance is too low.
CREATE FUNCTION debit_user_credits(
    p_user_id TEXT,
    p_amount NUMERIC,
    p_type TEXT,
    p_request_id TEXT,
    p_description TEXT,
    p_created_by TEXT DEFAULT NULL,
    p_metadata JSONB DEFAULT NULL,
    p_payment_intent_id TEXT DEFAULT NULL,
    p_charge_id TEXT DEFAULT NULL,
    p_amount_usd NUMERIC DEFAULT NULL,
    p_stripe_event_id TEXT DEFAULT NULL
) RETURNS TABLE (success BOOLEAN, new_balance NUMERIC, transaction_id BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_before NUMERIC;
    v_take NUMERIC;
    v_id BIGINT;
    v_month DATE := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
BEGIN
    PERFORM credits_check_user_id(p_user_id);
    PERFORM credits_check_amount(p_amount);
    IF p_type IS NULL OR p_type NOT IN ('usage', 'refund', 'admin_adjustment') THEN
        RAISE EXCEPTION 'transaction type % cannot debit credits; use usage, refund or admin_adjustment',
            coalesce(quote_literal(p_type), 'NULL') USING ERRCODE = 'CR003';
    END IF;
    PERFORM credits_check_text('request id', p_request_id, 255);
    PERFORM credits_check_text('description', p_description, 1000);
    PERFORM credits_check_text('created_by', p_created_by, 255);
    IF p_type = 'usage' AND (p_request_id IS NULL OR p_request_id = '') THEN
        RAISE EXCEPTION 'a usage debit needs its request id' USING ERRCODE = 'CR006';
    END IF;

    v_before := credits_lock_account(p_user_id, FALSE);

    IF p_request_id IS NOT NULL THEN
        PERFORM credits_check_key_owner(p_type, p_request_id, p_user_id);
        SELECT t.id INTO v_id FROM credit_transactions t
         WHERE t.transaction_type = p_type AND t.idempotency_key = p_request_id;
        IF FOUND THEN
            RETURN QUERY SELECT TRUE, v_before, v_id;
            RETURN;
        END IF;
    END IF;

    IF p_type = 'usage' THEN
        v_take := least(p_amount, greatest(v_before, 0));
    ELSIF p_type = 'refund' THEN
        v_take := p_amount;
    ELSIF v_before < p_amount THEN
        RETURN QUERY SELECT FALSE, v_before, NULL::BIGINT;
        RETURN;
    ELSE
        v_take := p_amount;
    END IF;

    INSERT INTO credit_transactions (
        user_id, transaction_type, amount, balance_before, balance_after, idempotency_key,
        request_id, payment_intent_id, charge_id, stripe_event_id, amount_usd, currency,
        credits_uncollected, description, metadata, created_by)
    VALUES (
        p_user_id, p_type, -v_take, v_before, v_before - v_take, p_request_id,
        CASE WHEN p_type = 'usage' THEN p_request_id END, p_payment_intent_id, p_charge_id,
        p_stripe_event_id, p_amount_usd, CASE WHEN p_amount_usd IS NOT NULL THEN 'usd' END,
        p_amount - v_take, p_description, coalesce(p_metadata, '{}'::jsonb), p_created_by)
    RETURNING id INTO v_id;

    IF p_type = 'usage' THEN
        UPDATE user_credits u
           SET balance = v_before - v_take,
               monthly_usage = CASE WHEN u.quota_period_start = v_month
                                    THEN u.monthly_usage + p_amount ELSE p_amount END,
               quota_period_start = v_month
         WHERE u.user_id = p_user_id;
        DELETE FROM credit_holds WHERE request_id = p_request_id;
    ELSE
        UPDATE user_credits SET balance = v_before - v_take WHERE user_id = p_user_id;
    END IF;
    RETURN QUERY SELECT TRUE, v_before - v_take, v_id;
END;
$$;

-- get_quota_usage_percentage ------------------------------------------------
-- Credits used this calendar month (UTC) against the account's monthly quota,
-- in percent. 0 for an unlimited account; 100 or more means the quota is spent.
CREATE FUNCTION get_quota_usage_percentage(p_user_id TEXT) RETURNS NUMERIC
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_quota NUMERIC;
    v_used NUMERIC;
BEGIN
    SELECT monthly_quota,
           CASE WHEN quota_period_start = date_trunc('month', now() AT TIME ZONE 'UTC')::date
                THEN monthly_usage ELSE 0 END
      INTO v_quota, v_used
      FROM user_credits WHERE user_id = p_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no credit account for user %', p_user_id USING ERRCODE = 'CR005';
    END IF;
    IF v_quota IS NULL THEN
        RETURN 0;
    END IF;
    IF v_quota = 0 THEN
        RETURN 100;
    END IF;
    RETURN round(v_used * 100 / v_quota, 2);
END;
$$;

-- Holds -------------------------------------------------------------------------
-- reserve_credits: the one database round trip of the pre-call hook.
-- Locks the account, applies the power level (the account's, or p_level when
-- the account allows overrides), checks the monthly quota, and places a hold
-- of p_base_amount x the level's multiplier if the available credits cover it.
-- Idempotent on p_request_id: a second call returns the first hold.
-- status: 'placed' | 'exists' | 'insufficient' | 'quota'.
CREATE FUNCTION reserve_credits(
    p_user_id TEXT,
    p_request_id TEXT,
    p_base_amount NUMERIC,
    p_level TEXT,
    p_ttl_seconds INTEGER
) RETURNS TABLE (
    status TEXT, power_level TEXT, cost_multiplier NUMERIC, hold_amount NUMERIC,
    balance NUMERIC, held NUMERIC, tier TEXT, monthly_quota NUMERIC, quota_used NUMERIC,
    byok_keys JSONB)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_acc user_credits%ROWTYPE;
    v_level TEXT;
    v_mult NUMERIC;
    v_amount NUMERIC;
    v_held NUMERIC;
    v_used NUMERIC;
    v_existing credit_holds%ROWTYPE;
    v_keys JSONB;
    v_status TEXT;
BEGIN
    PERFORM credits_check_user_id(p_user_id);
    PERFORM credits_check_amount(p_base_amount, TRUE);
    IF p_request_id IS NULL OR length(p_request_id) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'request id must be 1 to 255 characters' USING ERRCODE = 'CR006';
    END IF;
    IF p_ttl_seconds IS NULL OR p_ttl_seconds NOT BETWEEN 1 AND 86400 THEN
        RAISE EXCEPTION 'hold ttl must be between 1 and 86400 seconds' USING ERRCODE = 'CR006';
    END IF;
    -- A hold moves no money, so its commit need not wait for the WAL flush: this
    -- halves the hot path's database time. If the server crashes, the last few
    -- milliseconds of holds may vanish; their requests are still debited in full
    -- when they settle (synchronously), and the I3 bound grows by their estimates
    -- until they finish. Debits, grants and refunds keep synchronous commits.
    PERFORM set_config('synchronous_commit', 'off', true);

    SELECT * INTO v_acc FROM user_credits WHERE user_id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no credit account for user %', p_user_id
            USING ERRCODE = 'CR005', HINT = 'buy a credit package or ask an admin for a grant';
    END IF;

    v_level := v_acc.power_level;
    IF p_level IS NOT NULL AND p_level <> v_acc.power_level THEN
        IF p_level NOT IN ('eco', 'balanced', 'precision') THEN
            RAISE EXCEPTION 'unknown power level %; use eco, balanced or precision',
                quote_literal(p_level) USING ERRCODE = 'CR004';
        END IF;
        IF NOT v_acc.level_override_allowed THEN
            RAISE EXCEPTION 'this account may not choose its power level per request; it runs at %',
                v_acc.power_level USING ERRCODE = 'CR007';
        END IF;
        v_level := p_level;
    END IF;

    SELECT c.cost_multiplier INTO v_mult FROM power_level_configs c WHERE c.power_level = v_level;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'power level % has no configuration row', v_level USING ERRCODE = 'CR004';
    END IF;
    v_amount := round(p_base_amount * v_mult, 8);

    SELECT coalesce(sum(h.amount), 0) INTO v_held FROM credit_holds h
     WHERE h.user_id = p_user_id AND h.expires_at > now() AND h.request_id <> p_request_id;
    v_used := CASE WHEN v_acc.quota_period_start = date_trunc('month', now() AT TIME ZONE 'UTC')::date
                   THEN v_acc.monthly_usage ELSE 0 END;

    -- An expired hold no longer protects anything: place it again as new.
    DELETE FROM credit_holds h WHERE h.request_id = p_request_id AND h.expires_at <= now()
       AND h.user_id = p_user_id;
    SELECT * INTO v_existing FROM credit_holds h WHERE h.request_id = p_request_id;
    IF FOUND THEN
        IF v_existing.user_id <> p_user_id THEN
            RAISE EXCEPTION 'request id is already held for another account' USING ERRCODE = 'CR006';
        END IF;
        v_status := 'exists';
        v_amount := v_existing.amount;
    ELSIF v_acc.monthly_quota IS NOT NULL AND v_used >= v_acc.monthly_quota THEN
        v_status := 'quota';
    ELSIF v_acc.balance - v_held < v_amount OR v_acc.balance - v_held <= 0 THEN
        v_status := 'insufficient';
    ELSE
        INSERT INTO credit_holds (request_id, user_id, amount, expires_at)
        VALUES (p_request_id, p_user_id, v_amount, now() + make_interval(secs => p_ttl_seconds));
        v_status := 'placed';
    END IF;

    IF v_status IN ('placed', 'exists') THEN
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'id', k.id, 'provider', k.provider, 'key_name', k.key_name,
                   'is_default', k.is_default, 'fallback', k.fallback_to_platform,
                   'key_id', k.encryption_key_id,
                   'blob', encode(k.encrypted_key, 'base64')) ORDER BY k.id), '[]'::jsonb)
          INTO v_keys
          FROM user_provider_keys k WHERE k.user_id = p_user_id AND k.is_active;
    END IF;

    RETURN QUERY SELECT v_status, v_level, v_mult, v_amount, v_acc.balance,
        v_held + CASE WHEN v_status IN ('placed', 'exists') THEN v_amount ELSE 0 END,
        v_acc.tier, v_acc.monthly_quota, v_used, v_keys;
END;
$$;

-- Releases a hold without debiting (the request failed or was refused).
CREATE FUNCTION release_hold(p_request_id TEXT) RETURNS BOOLEAN
LANGUAGE sql AS $$
    WITH d AS (DELETE FROM credit_holds WHERE request_id = p_request_id RETURNING 1)
    SELECT count(*) > 0 FROM d;
$$;

-- Deletes holds past their expiry; returns how many. Safe from any replica.
CREATE FUNCTION sweep_expired_holds() RETURNS INTEGER
LANGUAGE sql AS $$
    WITH d AS (DELETE FROM credit_holds WHERE expires_at <= now() RETURNING 1)
    SELECT count(*)::integer FROM d;
$$;
