-- 0004: low-balance alerts. An outbox of alerts, the function that claims them,
-- and the trigger that re-arms an account once it is topped back up.
--
-- An account is "alerted" while user_credits.low_balance_alerted_at is set. The
-- timestamp names the episode: it is set (atomically, under the account's row
-- lock) by the first check that finds the balance below its threshold or at
-- zero, and cleared by the trigger below once a credit brings the balance back
-- to the threshold (and above zero). While it is set, no further low-balance
-- alert is recorded for the account; a zero-balance alert may still follow,
-- once, in the same episode.
--
-- credit_alerts is the outbox: one row per (user, kind, episode), enforced by a
-- unique index, so every proxy may run the check at once and each alert is
-- recorded once. Delivery claims due rows with FOR UPDATE SKIP LOCKED and a
-- lease (locked_until), so one proxy sends each alert, and a proxy that died
-- mid-send only delays it until the lease runs out.
--
-- Nothing here is on the request path: the check runs after settlement batches
-- and on a timer (litellm_credits.alerts). The trigger's WHEN clause makes it
-- free for usage debits (the balance goes down) and for accounts not alerted.
-- No index or column is added to the report's six tables.

CREATE TABLE credit_alerts (
    id               BIGSERIAL PRIMARY KEY,
    user_id          TEXT NOT NULL,
    kind             TEXT NOT NULL,
    episode          TIMESTAMPTZ NOT NULL,      -- user_credits.low_balance_alerted_at
    balance          NUMERIC(20, 8) NOT NULL,   -- when detected
    threshold        NUMERIC(20, 8) NOT NULL,   -- the effective threshold then
    tier             TEXT,
    status           TEXT NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_until     TIMESTAMPTZ,
    locked_by        TEXT,
    last_error       TEXT,
    response_status  INTEGER,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at          TIMESTAMPTZ,
    CONSTRAINT credit_alerts_kind_check CHECK (kind IN ('low_balance', 'zero_balance')),
    CONSTRAINT credit_alerts_status_check
        CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'unconfigured'))
);
-- Once per user, kind and episode, however many proxies look at the same time.
CREATE UNIQUE INDEX idx_credit_alerts_once ON credit_alerts (user_id, kind, episode);
-- What the delivery workers poll.
CREATE INDEX idx_credit_alerts_due ON credit_alerts (next_attempt_at)
    WHERE status IN ('pending', 'sending');

-- The threshold that applies to an account: its own column, else its tier's
-- default (p_tiers: {"tier": "amount", ...} from the credits config), else 0.
CREATE FUNCTION credits_alert_threshold(p_threshold NUMERIC, p_tier TEXT, p_tiers JSONB)
RETURNS NUMERIC
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(p_threshold, (p_tiers ->> p_tier)::numeric, 0);
$$;

-- credits_claim_balance_alerts ---------------------------------------------------
-- Records the alerts that are due for the given accounts (p_user_ids), or, with
-- NULL, for every account whose last ledger movement was a debit (the periodic
-- sweep that also catches refunds and admin debits). Returns the new outbox
-- rows only. p_status is the status new rows get: 'pending' when a webhook is
-- configured, 'unconfigured' when alerts are only recorded.
--
-- Rules, per account, under its row lock (taken in user_id order, like every
-- other multi-account statement, so it cannot deadlock with settlement):
--   * not alerted and balance <= 0           -> new episode, 'zero_balance'
--   * not alerted and balance < threshold    -> new episode, 'low_balance'
--   * alerted and balance <= 0               -> 'zero_balance' in the same episode
--                                               (once: the unique index)
CREATE FUNCTION credits_claim_balance_alerts(p_user_ids TEXT[], p_tiers JSONB, p_status TEXT)
RETURNS TABLE (id BIGINT, user_id TEXT, kind TEXT, episode TIMESTAMPTZ, balance NUMERIC,
               threshold NUMERIC, tier TEXT, created_at TIMESTAMPTZ)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_ids TEXT[];
    v_row RECORD;
    v_episode TIMESTAMPTZ;
    v_kind TEXT;
    v_id BIGINT;
    v_created TIMESTAMPTZ;
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('pending', 'unconfigured') THEN
        RAISE EXCEPTION 'alert status must be pending or unconfigured' USING ERRCODE = 'CR006';
    END IF;
    IF p_tiers IS NULL OR jsonb_typeof(p_tiers) <> 'object' THEN
        RAISE EXCEPTION 'tier thresholds must be a JSON object' USING ERRCODE = 'CR006';
    END IF;

    IF p_user_ids IS NULL THEN
        SELECT array_agg(u.user_id) INTO v_ids
          FROM user_credits u
         WHERE (u.balance <= 0
                OR u.balance < credits_alert_threshold(u.low_balance_threshold, u.tier, p_tiers))
           AND (u.low_balance_alerted_at IS NULL
                OR (u.balance <= 0 AND NOT EXISTS (
                        SELECT 1 FROM credit_alerts a
                         WHERE a.user_id = u.user_id AND a.kind = 'zero_balance'
                           AND a.episode = u.low_balance_alerted_at)))
           AND (SELECT t.amount FROM credit_transactions t
                 WHERE t.user_id = u.user_id
                 ORDER BY t.created_at DESC, t.id DESC LIMIT 1) < 0;
    ELSE
        v_ids := p_user_ids;
    END IF;
    IF v_ids IS NULL OR cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;

    FOR v_row IN
        SELECT u.user_id AS uid, u.balance AS bal, u.tier AS utier,
               u.low_balance_alerted_at AS alerted,
               credits_alert_threshold(u.low_balance_threshold, u.tier, p_tiers) AS thr
          FROM user_credits u
         WHERE u.user_id = ANY (v_ids)
           AND (u.balance <= 0
                OR (u.low_balance_alerted_at IS NULL
                    AND u.balance < credits_alert_threshold(u.low_balance_threshold, u.tier,
                                                            p_tiers)))
         ORDER BY u.user_id
           FOR UPDATE OF u
    LOOP
        IF v_row.alerted IS NULL THEN
            v_episode := clock_timestamp();
            UPDATE user_credits SET low_balance_alerted_at = v_episode
             WHERE user_credits.user_id = v_row.uid;
            v_kind := CASE WHEN v_row.bal <= 0 THEN 'zero_balance' ELSE 'low_balance' END;
        ELSE
            v_episode := v_row.alerted;
            v_kind := 'zero_balance';
        END IF;
        v_id := NULL;
        INSERT INTO credit_alerts AS a (user_id, kind, episode, balance, threshold, tier, status)
        VALUES (v_row.uid, v_kind, v_episode, v_row.bal, v_row.thr, v_row.utier, p_status)
        ON CONFLICT (user_id, kind, episode) DO NOTHING
        RETURNING a.id, a.created_at INTO v_id, v_created;
        IF v_id IS NOT NULL THEN
            RETURN QUERY SELECT v_id, v_row.uid, v_kind, v_episode, v_row.bal, v_row.thr,
                                v_row.utier, v_created;
        END IF;
    END LOOP;
END;
$$;

-- Re-arming ------------------------------------------------------------------------
-- When a credit (or a changed threshold) brings an alerted account back to its
-- threshold and above zero, clear low_balance_alerted_at so the next crossing
-- alerts again. The threshold is the account's own column when set, else the
-- one recorded with the episode's alert (tier defaults live in the config file,
-- not in the database; the alert row remembers what applied).
CREATE FUNCTION credits_rearm_balance_alert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_threshold NUMERIC := NEW.low_balance_threshold;
BEGIN
    IF v_threshold IS NULL THEN
        SELECT a.threshold INTO v_threshold FROM credit_alerts a
         WHERE a.user_id = NEW.user_id AND a.episode = OLD.low_balance_alerted_at
         ORDER BY a.id LIMIT 1;
    END IF;
    IF NEW.balance > 0 AND NEW.balance >= coalesce(v_threshold, 0) THEN
        NEW.low_balance_alerted_at := NULL;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER trigger_user_credits_rearm_alert
    BEFORE UPDATE OF balance, low_balance_threshold ON user_credits
    FOR EACH ROW
    WHEN (OLD.low_balance_alerted_at IS NOT NULL
          AND NEW.low_balance_alerted_at IS NOT DISTINCT FROM OLD.low_balance_alerted_at
          AND (NEW.balance > OLD.balance
               OR NEW.low_balance_threshold IS DISTINCT FROM OLD.low_balance_threshold))
    EXECUTE FUNCTION credits_rearm_balance_alert();
