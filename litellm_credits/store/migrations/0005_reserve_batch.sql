-- 0005: place several holds in one statement.
--
-- The pre-call hook's one database round trip (reserve_credits) was the largest
-- part of the plugin's cost on the proxy's own core: the client side of a
-- psycopg round trip costs about as much as everything else the hook does.
-- Reserves that arrive while one is on its way now travel together
-- (litellm_credits.holds), so a busy proxy pays that cost once per batch and
-- PostgreSQL commits once per batch.
--
-- Each item runs the unchanged reserve_credits in its own subtransaction, so a
-- bad item (an unknown account, a level the account may not choose) fails
-- alone and its SQLSTATE reaches its own request. Items are taken in user id
-- order, so batches from several proxies lock accounts in one order.
--
-- An account row that another transaction holds (a settlement batch, an admin
-- grant) is not waited for: the item comes back as 55P03 (lock_not_available)
-- and the caller retries that one request alone, where waiting is fine. So a
-- batch never waits on a lock, one busy account never delays the other
-- requests of the batch, and a batch can never be part of a deadlock.
CREATE FUNCTION reserve_credits_many(p_items JSONB)
RETURNS TABLE (
    ord INTEGER, status TEXT, power_level TEXT, cost_multiplier NUMERIC,
    hold_amount NUMERIC, balance NUMERIC, held NUMERIC, tier TEXT,
    monthly_quota NUMERIC, quota_used NUMERIC, byok_keys JSONB,
    err_state TEXT, err_message TEXT, err_hint TEXT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    it RECORD;
    r RECORD;
    v_state TEXT;
    v_message TEXT;
    v_hint TEXT;
BEGIN
    IF jsonb_typeof(p_items) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'reserve_credits_many expects a JSON array of items' USING ERRCODE = 'CR006';
    END IF;
    FOR it IN
        SELECT x.n::INTEGER AS n, x.u, x.rid, x.amt, x.lvl, x.ttl
          FROM ROWS FROM (jsonb_to_recordset(p_items)
               AS (u TEXT, rid TEXT, amt NUMERIC, lvl TEXT, ttl INTEGER))
               WITH ORDINALITY AS x(u, rid, amt, lvl, ttl, n)
         ORDER BY x.u COLLATE "C", x.n
    LOOP
        BEGIN
            PERFORM 1 FROM user_credits c WHERE c.user_id = it.u FOR UPDATE NOWAIT;
            SELECT * INTO r FROM reserve_credits(it.u, it.rid, it.amt, it.lvl, it.ttl);
            RETURN QUERY SELECT it.n, r.status, r.power_level, r.cost_multiplier,
                r.hold_amount, r.balance, r.held, r.tier, r.monthly_quota, r.quota_used,
                r.byok_keys, NULL::TEXT, NULL::TEXT, NULL::TEXT;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                    v_hint = PG_EXCEPTION_HINT;
            RETURN QUERY SELECT it.n, NULL::TEXT, NULL::TEXT, NULL::NUMERIC, NULL::NUMERIC,
                NULL::NUMERIC, NULL::NUMERIC, NULL::TEXT, NULL::NUMERIC, NULL::NUMERIC,
                NULL::JSONB, v_state, v_message, NULLIF(v_hint, '');
        END;
    END LOOP;
END;
$$;
