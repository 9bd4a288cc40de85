"""The exception root of litellm-credits.

Every error the package raises on purpose derives from :class:`CreditsError`.
Each carries an HTTP status and a stable ``code`` so the hook, the API and the
CLI can all turn it into a clear refusal the same way. Messages name what was
wrong and how to fix it, and never contain secrets.

Database errors are translated into these classes in exactly one place,
:func:`litellm_credits.store.db.translate`.
"""

from __future__ import annotations

from typing import Any


class CreditsError(Exception):
    """Root of every error litellm-credits raises on purpose."""

    http_status: int = 500
    code: str = "credits_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class ConfigError(CreditsError):
    code = "config_error"


# --- bad input (invariant I8) ------------------------------------------------


class InvalidInput(CreditsError):
    http_status = 400
    code = "invalid_input"


class InvalidAmount(InvalidInput):
    code = "invalid_amount"


class InvalidUserId(InvalidInput):
    code = "invalid_user_id"


class InvalidTransactionType(InvalidInput):
    code = "invalid_transaction_type"


class InvalidPowerLevel(InvalidInput):
    code = "invalid_power_level"


class UnknownModel(InvalidInput):
    code = "unknown_model"


# --- refusals on the request path ---------------------------------------------


class NotAuthenticated(CreditsError):
    http_status = 401
    code = "no_payer"


class Forbidden(CreditsError):
    http_status = 403
    code = "forbidden"


class AccountNotFound(CreditsError):
    http_status = 402
    code = "no_credit_account"


class InsufficientCredits(CreditsError):
    http_status = 402
    code = "insufficient_credits"


class QuotaExceeded(CreditsError):
    http_status = 429
    code = "monthly_quota_exceeded"


class LevelNotAllowed(Forbidden):
    code = "power_level_not_allowed"


class UnpricedModel(CreditsError):
    """Invariant I5: a model with no known price is refused, never billed 0."""

    http_status = 400
    code = "unpriced_model"


class NoRoute(CreditsError):
    http_status = 503
    code = "no_route"


class NotFound(CreditsError):
    http_status = 404
    code = "not_found"


class Conflict(CreditsError):
    http_status = 409
    code = "conflict"


# --- infrastructure -------------------------------------------------------------


class DatabaseUnavailable(CreditsError):
    """The database cannot be reached or timed out; fail mode decides what follows."""

    http_status = 503
    code = "credits_database_unavailable"


class MigrationError(CreditsError):
    code = "migration_error"


class ChecksumMismatch(MigrationError):
    code = "migration_checksum_mismatch"


# --- BYOK vault -----------------------------------------------------------------


class VaultError(CreditsError):
    http_status = 500
    code = "vault_error"


class VaultNotConfigured(VaultError):
    """``CREDITS_ENCRYPTION_KEYS`` is unset: BYOK keys can be neither stored nor used.

    503 on every surface (a chat by a user with a stored key, ``POST /credits/keys``):
    the proxy is missing its configuration, the request itself is fine.
    """

    http_status = 503
    code = "vault_not_configured"


class VaultDecryptError(VaultError):
    http_status = 502
    code = "byok_key_unusable"


# --- payments -------------------------------------------------------------------


class PaymentError(CreditsError):
    http_status = 400
    code = "payment_error"


class WebhookSignatureError(PaymentError):
    code = "bad_webhook_signature"
