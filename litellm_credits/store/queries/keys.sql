-- Named queries of the BYOK key store (litellm_credits.keys). Every name starts
-- with keys_. Parameters are always bound, never formatted in.
--
-- No query here returns encrypted_key except the rotation ones, which read it
-- under a row lock to re-encrypt it. Nothing here ever sees a plaintext key.

-- name: keys_lock_user_provider
-- Serializes key changes for one (user, provider) until the transaction ends,
-- so "the first key becomes the default" cannot race with itself. Readers
-- (reserve_credits, keys_list) never take this lock.
SELECT pg_advisory_xact_lock(
    hashtextextended('litellm_credits.keys/' || %(user_id)s::text || '/' || %(provider)s::text, 0));

-- name: keys_find_for_update
SELECT id, is_active, is_default
  FROM user_provider_keys
 WHERE user_id = %(user_id)s AND provider = %(provider)s AND key_name = %(key_name)s
   FOR UPDATE;

-- name: keys_has_active_default
SELECT EXISTS (
    SELECT 1 FROM user_provider_keys
     WHERE user_id = %(user_id)s AND provider = %(provider)s AND is_active AND is_default
) AS has_default;

-- name: keys_clear_defaults
-- Clears the default flag of the user's other keys for the provider. Runs
-- before a key is marked default: the partial unique index allows one.
UPDATE user_provider_keys
   SET is_default = FALSE
 WHERE user_id = %(user_id)s AND provider = %(provider)s AND is_default
   AND key_name <> %(key_name)s;

-- name: keys_insert
INSERT INTO user_provider_keys
       (user_id, provider, key_name, encrypted_key, encryption_key_id, key_hint,
        is_default, is_active, fallback_to_platform)
VALUES (%(user_id)s, %(provider)s, %(key_name)s, %(encrypted_key)s, %(encryption_key_id)s,
        %(key_hint)s, %(is_default)s, TRUE, %(fallback_to_platform)s)
RETURNING id, user_id, provider, key_name, key_hint, encryption_key_id, is_default,
          is_active, fallback_to_platform, usage_count, last_used_at, created_at, revoked_at;

-- name: keys_reactivate
-- Re-adding the name of a revoked key: the row (and its id, which old usage
-- rows refer to) is reused for the new secret; counters start again.
UPDATE user_provider_keys
   SET encrypted_key = %(encrypted_key)s,
       encryption_key_id = %(encryption_key_id)s,
       key_hint = %(key_hint)s,
       is_default = %(is_default)s,
       is_active = TRUE,
       fallback_to_platform = %(fallback_to_platform)s,
       usage_count = 0,
       last_used_at = NULL,
       created_at = now(),
       revoked_at = NULL
 WHERE id = %(id)s AND NOT is_active
RETURNING id, user_id, provider, key_name, key_hint, encryption_key_id, is_default,
          is_active, fallback_to_platform, usage_count, last_used_at, created_at, revoked_at;

-- name: keys_list
SELECT id, user_id, provider, key_name, key_hint, encryption_key_id, is_default,
       is_active, fallback_to_platform, usage_count, last_used_at, created_at, revoked_at
  FROM user_provider_keys
 WHERE user_id = %(user_id)s
 ORDER BY provider, is_active DESC, key_name;

-- name: keys_get
SELECT id, user_id, provider, key_name, key_hint, encryption_key_id, is_default,
       is_active, fallback_to_platform, usage_count, last_used_at, created_at, revoked_at
  FROM user_provider_keys
 WHERE user_id = %(user_id)s AND provider = %(provider)s AND key_name = %(key_name)s;

-- name: keys_active_names
SELECT key_name
  FROM user_provider_keys
 WHERE user_id = %(user_id)s AND provider = %(provider)s AND is_active
 ORDER BY key_name;

-- name: keys_revoke
UPDATE user_provider_keys
   SET is_active = FALSE, is_default = FALSE, revoked_at = now()
 WHERE user_id = %(user_id)s AND provider = %(provider)s AND key_name = %(key_name)s
   AND is_active
RETURNING id, user_id, provider, key_name, key_hint, encryption_key_id, is_default,
          is_active, fallback_to_platform, usage_count, last_used_at, created_at, revoked_at;

-- name: keys_mark_default
UPDATE user_provider_keys
   SET is_default = TRUE
 WHERE user_id = %(user_id)s AND provider = %(provider)s AND key_name = %(key_name)s
   AND is_active
RETURNING id, user_id, provider, key_name, key_hint, encryption_key_id, is_default,
          is_active, fallback_to_platform, usage_count, last_used_at, created_at, revoked_at;

-- name: keys_set_fallback
UPDATE user_provider_keys
   SET fallback_to_platform = %(fallback_to_platform)s
 WHERE user_id = %(user_id)s AND provider = %(provider)s AND key_name = %(key_name)s
   AND is_active
RETURNING id, user_id, provider, key_name, key_hint, encryption_key_id, is_default,
          is_active, fallback_to_platform, usage_count, last_used_at, created_at, revoked_at;

-- name: keys_count_under
-- Rotation: how many rows a master key id seals.
SELECT count(*) AS n FROM user_provider_keys WHERE encryption_key_id = %(key_id)s;

-- name: keys_rotation_batch
-- Ids of rows sealed under another master key, after a cursor (keyset
-- paging, so rows that fail are passed over instead of read again).
SELECT id
  FROM user_provider_keys
 WHERE encryption_key_id <> %(active_key_id)s AND id > %(after_id)s
 ORDER BY id
 LIMIT %(limit)s;

-- name: keys_rotation_lock
-- One row, locked for the few microseconds of its re-encryption. SKIP LOCKED:
-- a row busy in another transaction (another rotator, a revoke) is passed
-- over and retried, never waited on. The key id is checked again under the
-- lock, so a row another rotator already finished is left alone.
SELECT id, user_id, provider, key_name, encrypted_key, encryption_key_id
  FROM user_provider_keys
 WHERE id = %(id)s AND encryption_key_id <> %(active_key_id)s
   FOR UPDATE SKIP LOCKED;

-- name: keys_rotation_state
SELECT encryption_key_id FROM user_provider_keys WHERE id = %(id)s;

-- name: keys_rotation_store
UPDATE user_provider_keys
   SET encrypted_key = %(encrypted_key)s, encryption_key_id = %(encryption_key_id)s
 WHERE id = %(id)s AND encryption_key_id = %(old_key_id)s
RETURNING id;

-- name: keys_rotation_count_remaining
SELECT count(*) AS n FROM user_provider_keys WHERE encryption_key_id <> %(active_key_id)s;
