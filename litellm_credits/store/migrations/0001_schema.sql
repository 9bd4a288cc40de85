-- 0001: the six tables of the deployed-schema report, their 33 indexes,
-- the two updated_at triggers, and the seed rows.
--
-- Differences from the report, on purpose (see docs/invariants.md):
--   * user_id is TEXT, not uuid: LiteLLM user ids are free strings.
--   * credits are NUMERIC(20,8): a fraction of a cent per request must not round to 0.
--   * the "type" index on credit_transactions is UNIQUE (transaction_type, idempotency_key):
--     it still serves filtering by type, and it is what makes every money movement
--     idempotent (a usage debit on its request id, a purchase on its payment intent).

CREATE FUNCTION update_updated_at_column() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- user_credits: 14 columns, 5 indexes ----------------------------------------
CREATE TABLE user_credits (
    id                      BIGSERIAL PRIMARY KEY,
    user_id                 TEXT NOT NULL,
    balance                 NUMERIC(20, 8) NOT NULL DEFAULT 0,
    tier                    TEXT NOT NULL DEFAULT 'free',
    power_level             TEXT NOT NULL DEFAULT 'balanced',
    level_override_allowed  BOOLEAN NOT NULL DEFAULT TRUE,
    monthly_quota           NUMERIC(20, 8),            -- credits per month; NULL = unlimited
    monthly_usage           NUMERIC(20, 8) NOT NULL DEFAULT 0,
    quota_period_start      DATE NOT NULL DEFAULT date_trunc('month', now())::date,
    low_balance_threshold   NUMERIC(20, 8),            -- NULL = the tier's default
    low_balance_alerted_at  TIMESTAMPTZ,               -- set when an alert fired, cleared on top-up
    updated_by              TEXT,                      -- who made the last admin change
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT user_credits_user_id_key UNIQUE (user_id),
    CONSTRAINT user_credits_user_id_len CHECK (length(user_id) BETWEEN 1 AND 255),
    CONSTRAINT user_credits_power_level_check
        CHECK (power_level IN ('eco', 'balanced', 'precision')),
    CONSTRAINT user_credits_quota_check CHECK (monthly_quota IS NULL OR monthly_quota >= 0)
);
CREATE INDEX idx_user_credits_tier ON user_credits (tier);
CREATE INDEX idx_user_credits_updated_at ON user_credits (updated_at);
CREATE INDEX idx_user_credits_power_level ON user_credits (power_level);

CREATE TRIGGER trigger_user_credits_updated_at
    BEFORE UPDATE ON user_credits
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- credit_transactions: 21 columns, 6 indexes ---------------------------------
CREATE TABLE credit_transactions (
    id                      BIGSERIAL PRIMARY KEY,
    user_id                 TEXT NOT NULL,
    transaction_type        TEXT NOT NULL,
    amount                  NUMERIC(20, 8) NOT NULL,   -- signed: + credits in, - credits out
    balance_before          NUMERIC(20, 8) NOT NULL,
    balance_after           NUMERIC(20, 8) NOT NULL,
    idempotency_key         TEXT,                      -- request id, payment intent, refund key
    request_id              TEXT,
    payment_intent_id       TEXT,
    charge_id               TEXT,
    stripe_event_id         TEXT,
    package_id              INTEGER,
    amount_usd              NUMERIC(12, 2),            -- money paid or refunded
    currency                TEXT,
    credits_uncollected     NUMERIC(20, 8) NOT NULL DEFAULT 0,  -- usage cost above the balance
    related_transaction_id  BIGINT REFERENCES credit_transactions (id),
    description             TEXT,
    metadata                JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_by              TEXT,
    status                  TEXT NOT NULL DEFAULT 'completed',
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT credit_transactions_type_check CHECK (
        transaction_type IN ('purchase', 'usage', 'refund', 'admin_adjustment', 'bonus')),
    CONSTRAINT credit_transactions_chain_check CHECK (balance_after = balance_before + amount),
    CONSTRAINT credit_transactions_uncollected_check CHECK (credits_uncollected >= 0)
);
CREATE INDEX idx_credit_transactions_user_id ON credit_transactions (user_id);
CREATE INDEX idx_credit_transactions_user_date ON credit_transactions (user_id, created_at);
CREATE UNIQUE INDEX idx_credit_transactions_type
    ON credit_transactions (transaction_type, idempotency_key);
CREATE INDEX idx_credit_transactions_created_at ON credit_transactions (created_at);
CREATE INDEX idx_credit_transactions_stripe ON credit_transactions (payment_intent_id)
    WHERE payment_intent_id IS NOT NULL;

-- credit_packages: 13 columns, 3 indexes --------------------------------------
CREATE TABLE credit_packages (
    id                   SERIAL PRIMARY KEY,
    name                 TEXT NOT NULL,
    description          TEXT,
    credits              NUMERIC(20, 8) NOT NULL CHECK (credits > 0),
    price_usd            NUMERIC(12, 2) NOT NULL CHECK (price_usd > 0),
    discount_percentage  NUMERIC(5, 2) NOT NULL DEFAULT 0
                         CHECK (discount_percentage >= 0 AND discount_percentage < 100),
    badge                TEXT,
    stripe_price_id      TEXT,
    is_active            BOOLEAN NOT NULL DEFAULT TRUE,
    sort_order           INTEGER NOT NULL DEFAULT 0,
    updated_by           TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_credit_packages_sort_order ON credit_packages (sort_order);
CREATE INDEX idx_credit_packages_is_active ON credit_packages (is_active);

CREATE TRIGGER trigger_credit_packages_updated_at
    BEFORE UPDATE ON credit_packages
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- power_level_configs: 10 columns, 2 indexes ---------------------------------
CREATE TABLE power_level_configs (
    id                   SERIAL PRIMARY KEY,
    power_level          TEXT NOT NULL,
    display_name         TEXT NOT NULL,
    description          TEXT,
    cost_multiplier      NUMERIC(6, 3) NOT NULL CHECK (cost_multiplier > 0),
    max_latency_ms       INTEGER NOT NULL CHECK (max_latency_ms > 0),
    min_quality_score    NUMERIC(4, 3) NOT NULL CHECK (min_quality_score BETWEEN 0 AND 1),
    preferred_providers  JSONB NOT NULL DEFAULT '[]'::jsonb
                         CHECK (jsonb_typeof(preferred_providers) = 'array'),
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT power_level_configs_power_level_key UNIQUE (power_level),
    CONSTRAINT valid_power_level_config CHECK (power_level IN ('eco', 'balanced', 'precision'))
);

-- user_provider_keys: 14 columns, 6 indexes ----------------------------------
CREATE TABLE user_provider_keys (
    id                    BIGSERIAL PRIMARY KEY,
    user_id               TEXT NOT NULL,
    provider              TEXT NOT NULL,
    key_name              TEXT NOT NULL,
    encrypted_key         BYTEA NOT NULL,       -- version || nonce || AES-256-GCM ciphertext+tag
    encryption_key_id     TEXT NOT NULL,        -- which master key sealed it
    key_hint              TEXT NOT NULL,        -- last characters only, for people
    is_default            BOOLEAN NOT NULL DEFAULT FALSE,
    is_active             BOOLEAN NOT NULL DEFAULT TRUE,
    fallback_to_platform  BOOLEAN NOT NULL DEFAULT FALSE,
    usage_count           BIGINT NOT NULL DEFAULT 0,
    last_used_at          TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at            TIMESTAMPTZ,
    CONSTRAINT user_provider_keys_user_provider_name_key UNIQUE (user_id, provider, key_name),
    CONSTRAINT user_provider_keys_name_len CHECK (length(key_name) BETWEEN 1 AND 64)
);
CREATE INDEX idx_user_provider_keys_user_id ON user_provider_keys (user_id);
CREATE INDEX idx_user_provider_keys_provider ON user_provider_keys (provider);
CREATE INDEX idx_user_provider_keys_active ON user_provider_keys (is_active);
-- At most one active default key per user and provider.
CREATE UNIQUE INDEX idx_user_provider_keys_default
    ON user_provider_keys (user_id, provider) WHERE is_default AND is_active;

-- llm_usage_log: 27 columns, 11 indexes --------------------------------------
-- Whether a request was BYOK is byok_key_id IS NOT NULL (the key row that served it).
CREATE TABLE llm_usage_log (
    id                      BIGSERIAL PRIMARY KEY,
    request_id              TEXT NOT NULL,
    user_id                 TEXT NOT NULL,
    model                   TEXT,
    model_group             TEXT,
    provider                TEXT,
    api_base                TEXT,
    power_level             TEXT,
    byok_key_id             BIGINT REFERENCES user_provider_keys (id),
    prompt_tokens           INTEGER NOT NULL DEFAULT 0,
    completion_tokens       INTEGER NOT NULL DEFAULT 0,
    cached_tokens           INTEGER NOT NULL DEFAULT 0,
    total_tokens            INTEGER NOT NULL DEFAULT 0,
    provider_cost_usd       NUMERIC(20, 10) NOT NULL DEFAULT 0,
    credits_charged         NUMERIC(20, 8) NOT NULL DEFAULT 0,
    cost_multiplier         NUMERIC(6, 3),
    latency_ms              INTEGER,
    time_to_first_token_ms  INTEGER,
    success                 BOOLEAN NOT NULL,
    status_code             INTEGER,
    error_type              TEXT,
    error_message           TEXT,
    app_id                  TEXT,
    session_id              TEXT,
    request_metadata        JSONB NOT NULL DEFAULT '{}'::jsonb,
    response_metadata       JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT llm_usage_log_request_id_key UNIQUE (request_id),
    CONSTRAINT llm_usage_log_credits_check CHECK (credits_charged >= 0)
);
CREATE INDEX idx_llm_usage_log_user_id ON llm_usage_log (user_id);
CREATE INDEX idx_llm_usage_log_user_date ON llm_usage_log (user_id, created_at);
CREATE INDEX idx_llm_usage_log_model ON llm_usage_log (model);
CREATE INDEX idx_llm_usage_log_provider ON llm_usage_log (provider);
CREATE INDEX idx_llm_usage_log_app_id ON llm_usage_log (app_id) WHERE app_id IS NOT NULL;
CREATE INDEX idx_llm_usage_log_session_id ON llm_usage_log (session_id)
    WHERE session_id IS NOT NULL;
CREATE INDEX idx_llm_usage_log_created_at ON llm_usage_log (created_at);
CREATE INDEX idx_llm_usage_log_success ON llm_usage_log (success);
-- Recent latency per deployment, read by routing's background refresher.
CREATE INDEX idx_llm_usage_log_group_date ON llm_usage_log (model_group, created_at);

-- Seed rows, exactly as the deployment report lists them ---------------------
INSERT INTO credit_packages
    (id, name, description, credits, price_usd, discount_percentage, badge, sort_order)
VALUES
    (1, 'Starter Pack', '100 credits to get started', 100, 10.00, 0, NULL, 1),
    (2, 'Value Pack', '500 credits at 10% off', 500, 45.00, 10, 'MOST POPULAR', 2),
    (3, 'Pro Pack', '1000 credits at 20% off', 1000, 80.00, 20, 'BEST VALUE', 3),
    (4, 'Enterprise Pack', '5000 credits at 30% off', 5000, 350.00, 30, NULL, 4);
SELECT setval(pg_get_serial_sequence('credit_packages', 'id'), 4);

INSERT INTO power_level_configs
    (id, power_level, display_name, description, cost_multiplier, max_latency_ms,
     min_quality_score, preferred_providers)
VALUES
    (1, 'eco', 'Eco Mode', 'Cheapest capable providers', 0.7, 5000, 0.70,
     '["openrouter", "together", "deepinfra"]'),
    (2, 'balanced', 'Balanced Mode', 'Good quality at a fair price', 1.0, 3000, 0.85,
     '["openai", "anthropic", "openrouter"]'),
    (3, 'precision', 'Precision Mode', 'Best models, fastest answers', 1.5, 2000, 0.95,
     '["anthropic", "openai"]');
SELECT setval(pg_get_serial_sequence('power_level_configs', 'id'), 3);
