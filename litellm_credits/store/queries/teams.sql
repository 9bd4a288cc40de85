-- Team wallets (api/teams.py): a team's account is the ledger user_id 'team:<team_id>'.

-- name: team_usage_rows
-- Like usage_rows, plus who spent: the payer record the hook wrote (identity.Payer.describe:
-- rule, member, team_id, key_hash, key_alias; never the key).
SELECT request_id, user_id, model, model_group, provider, power_level,
       byok_key_id IS NOT NULL AS is_byok, prompt_tokens, completion_tokens, cached_tokens,
       total_tokens, provider_cost_usd, credits_charged, cost_multiplier, latency_ms,
       time_to_first_token_ms, success, status_code, error_type, app_id, session_id, created_at,
       request_metadata -> 'payer' AS spent_by
  FROM llm_usage_log
 WHERE user_id = %(user_id)s
 ORDER BY created_at DESC, id DESC
 LIMIT %(limit)s OFFSET %(offset)s;
