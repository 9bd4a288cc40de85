"""``litellm-credits keys ...``: users' own provider keys (BYOK) from the command line.

    keys add USER PROVIDER --name NAME [--default] [--fallback-to-platform]
    keys list USER
    keys revoke USER PROVIDER --name NAME
    keys set-default USER PROVIDER --name NAME
    keys set-fallback USER PROVIDER --name NAME on|off
    keys rotate [--batch-size N] [--max-rows N]
    keys generate-master-key [--id ID]

The provider key itself is read from stdin when stdin is not a terminal (one
trailing newline is removed), otherwise from a hidden prompt. There is no
argument or option that takes it: argv is visible to every user of the
machine through ``ps`` and lands in shell history. Output shows the hint
(``…WXYZ``), never the key.

The master keys come from ``CREDITS_ENCRYPTION_KEYS`` (see docs/vault.md).
Without it, ``add`` and ``rotate`` refuse with the recipe for making one and
exit 2, like every other configuration error.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import sys
from datetime import UTC, datetime
from typing import Any

from litellm_credits import errors
from litellm_credits.byok.keys import KeyStore
from litellm_credits.byok.masterkeys import ENV_VAR, generate_key_entry
from litellm_credits.byok.records import KeyInfo
from litellm_credits.byok.rotation import RotationReport
from litellm_credits.byok.validate import (
    MAX_PLAINTEXT_CHARS,
    InvalidProviderKey,
    check_key_name,
    normalize_provider,
)
from litellm_credits.byok.vault import Vault
from litellm_credits.cli.common import AddCommand, Context, Handler, Subparsers, emit, operator
from litellm_credits.store.db import Database
from litellm_credits.values import check_user_id

#: Read at most this many characters from stdin; anything longer is refused as too long.
_STDIN_LIMIT = MAX_PLAINTEXT_CHARS + 3


def read_secret(prompt: str) -> str:
    """The provider key from stdin (not a terminal) or a hidden prompt (a terminal).

    Never echoes it. Only one trailing line break is removed here; the vault
    strips other surrounding whitespace and refuses control characters.
    """
    stream = sys.stdin
    if stream is None:
        raise InvalidProviderKey("no stdin to read the provider key from")
    if stream.isatty():
        try:
            text = getpass.getpass(prompt)
        except EOFError:
            text = ""
    else:
        text = stream.read(_STDIN_LIMIT)
        if text.endswith("\n"):
            text = text[:-1]
            if text.endswith("\r"):
                text = text[:-1]
    if not text.strip():
        del text
        raise InvalidProviderKey(
            "no provider key was given; pipe it on stdin, e.g. "
            "printf '%s' \"$KEY\" | litellm-credits keys add USER PROVIDER --name NAME, "
            "or run the command in a terminal to be prompted for it"
        )
    return text


def _vault() -> Vault:
    return Vault.from_env()


def _store(ctx: Context, db: Database, vault: Vault | None) -> KeyStore:
    return KeyStore(db, vault, aliases=ctx.settings.provider_aliases)


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _row(info: KeyInfo) -> dict[str, Any]:
    """One key as a table row."""
    return {
        "provider": info.provider,
        "name": info.name,
        "default": "yes" if info.is_default else "",
        "active": "yes" if info.is_active else "revoked",
        "fallback": "yes" if info.fallback_to_platform else "",
        "hint": info.hint,
        "uses": info.usage_count,
        "last_used": info.last_used_at,
        "created": info.created_at,
        "revoked": info.revoked_at,
        "master_key": info.encryption_key_id,
        "id": info.id,
    }


def _show(args: argparse.Namespace, info: KeyInfo) -> None:
    emit(args, info.to_dict() if args.json else _row(info))


# --- handlers ---------------------------------------------------------------------


async def cmd_add(args: argparse.Namespace, ctx: Context) -> int:
    vault = _vault()  # refuse before asking for the key
    aliases = ctx.settings.provider_aliases
    user = check_user_id(args.user)
    provider = normalize_provider(args.provider, aliases)
    name = check_key_name(args.name)
    secret = read_secret(f"{provider} API key for user {user!r} (key {name!r}; input hidden): ")
    try:
        store = _store(ctx, await ctx.db(), vault)
        info = await store.add(
            user, provider, name, secret,
            default=args.default,
            fallback_to_platform=args.fallback_to_platform,
            created_by=operator(),
        )
    finally:
        del secret
    _show(args, info)
    if info.is_default and not args.default:
        _note(f"user {user!r} had no default {provider} key, so this key is now the default")
    return 0


async def cmd_list(args: argparse.Namespace, ctx: Context) -> int:
    store = _store(ctx, await ctx.db(), None)
    keys = await store.list(args.user)
    if args.json:
        emit(args, [k.to_dict() for k in keys])
    else:
        emit(args, [_row(k) for k in keys])
    return 0


async def cmd_revoke(args: argparse.Namespace, ctx: Context) -> int:
    store = _store(ctx, await ctx.db(), None)
    result = await store.revoke(args.user, args.provider, args.name, by=operator())
    emit(args, result.to_dict() if args.json else _row(result.key))
    key = result.key
    if not result.revoked_now:
        _note(f"the key was already revoked (at {key.revoked_at}); nothing changed")
    elif result.was_default:
        if result.remaining_active:
            others = ", ".join(repr(n) for n in result.remaining_active)
            _note(
                f"this was the default {key.provider} key; the user has no default "
                f"{key.provider} key now, so requests use platform keys unless they name a "
                f"key. Still active: {others}. Pick a default with: litellm-credits keys "
                f"set-default USER {key.provider} --name NAME"
            )
        else:
            _note(f"the user has no active {key.provider} key now; requests use platform keys")
    return 0


async def cmd_set_default(args: argparse.Namespace, ctx: Context) -> int:
    store = _store(ctx, await ctx.db(), None)
    _show(args, await store.set_default(args.user, args.provider, args.name, by=operator()))
    return 0


async def cmd_set_fallback(args: argparse.Namespace, ctx: Context) -> int:
    store = _store(ctx, await ctx.db(), None)
    info = await store.set_fallback(
        args.user, args.provider, args.name, args.value == "on", by=operator()
    )
    _show(args, info)
    return 0


async def cmd_rotate(args: argparse.Namespace, ctx: Context) -> int:
    vault = _vault()
    store = _store(ctx, await ctx.db(), vault)

    def progress(report: RotationReport) -> None:
        if sys.stderr.isatty():
            print(f"... {report.rotated} re-encrypted so far", file=sys.stderr)

    report = await store.rotate(args.batch_size, max_rows=args.max_rows, progress=progress)
    if args.json:
        emit(args, report.to_dict())
    else:
        emit(args, {
            "active_key_id": report.active_key_id,
            "rotated": report.rotated,
            "already_current": report.already_current,
            "failed": len(report.failed),
            "busy": len(report.busy),
            "remaining": report.remaining,
        })
    for row_id in report.failed:
        print(f"error: key row {row_id}: {report.errors.get(row_id, 'could not be decrypted')}",
              file=sys.stderr)
    if report.busy:
        _note(f"rows {report.busy} were locked by other transactions; run keys rotate again")
    if report.complete:
        return 0
    if report.remaining and not report.failed and not report.busy:
        _note(
            f"{report.remaining} row(s) are still sealed with an older master key; a proxy "
            f"may still run with another key first in {ENV_VAR}. Restart every proxy with "
            f"{report.active_key_id!r} first, then run keys rotate again"
        )
    return 1


async def cmd_generate_master_key(args: argparse.Namespace, ctx: Context) -> int:
    key_id = args.id or "k" + datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    entry = generate_key_entry(key_id)
    if args.json:
        print(json.dumps({"env_var": ENV_VAR, "key_id": key_id, "entry": entry}, indent=2))
    else:
        print(entry)
    print(
        f"The line on stdout is a new master key entry {key_id!r}: keep it secret and backed "
        "up (without it, keys sealed with it cannot be read).\n"
        f"  First master key:  export {ENV_VAR}=\"NEW_ENTRY\"\n"
        f"  Rotation:          export {ENV_VAR}=\"NEW_ENTRY,${ENV_VAR}\"  (new entry first, "
        "old ones after it),\n"
        "                     restart every proxy, then run: litellm-credits keys rotate\n"
        "(See docs/vault.md.)",
        file=sys.stderr,
    )
    return 0


# --- wiring -------------------------------------------------------------------------


def _exit_2_without_vault(handler: Handler) -> Handler:
    """A missing master key is a configuration error: print the recipe, exit 2."""

    @functools.wraps(handler)
    async def wrapped(args: argparse.Namespace, ctx: Context) -> int:
        try:
            return await handler(args, ctx)
        except errors.VaultNotConfigured as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2

    return wrapped


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def register(sub: Subparsers, add: AddCommand) -> None:
    """Add the ``keys`` command group to the ``litellm-credits`` parser."""
    keys = sub.add_parser(
        "keys",
        help="users' own provider keys (BYOK): add, list, revoke, set-default, rotate",
        description="Users' own provider API keys, stored encrypted with the master keys in "
        f"{ENV_VAR}. Keys are read from stdin or a hidden prompt, never from arguments.",
    )
    group = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(handler=_exit_2_without_vault(handler))
        return p

    def key_ref(p: argparse.ArgumentParser) -> None:
        p.add_argument("user", help="the LiteLLM user id")
        p.add_argument("provider", help="LiteLLM provider name, e.g. openai, anthropic")
        p.add_argument("--name", required=True, help="the key's name (1-64 characters)")

    p = command(
        "add", cmd_add,
        "store a user's provider key; the key is read from stdin (when piped) or a hidden "
        "prompt, never from the command line. The user's first key for a provider becomes "
        "its default",
    )
    key_ref(p)
    p.add_argument("--default", action="store_true",
                   help="make it the user's default key for the provider")
    p.add_argument("--fallback-to-platform", action="store_true",
                   help="if the provider rejects this key, serve the request with platform "
                   "keys (billed normally) instead of failing")

    p = command("list", cmd_list, "list a user's keys (hints only, never the keys)")
    p.add_argument("user", help="the LiteLLM user id")

    p = command("revoke", cmd_revoke, "revoke a key; proxies stop using it within seconds")
    key_ref(p)

    p = command("set-default", cmd_set_default,
                "make a key the user's default for its provider")
    key_ref(p)

    p = command("set-fallback", cmd_set_fallback,
                "whether requests fall back to platform keys when the provider rejects the key")
    key_ref(p)
    p.add_argument("value", choices=("on", "off"))

    p = command(
        "rotate", cmd_rotate,
        f"re-encrypt every stored key under the active (first) master key of {ENV_VAR}; "
        "safe while proxies serve, and safe to interrupt and run again",
    )
    p.add_argument("--batch-size", type=_positive, default=100,
                   help="rows read per batch (default 100); each row is its own transaction")
    p.add_argument("--max-rows", type=_positive, default=None,
                   help="stop after this many rows (run again to continue)")

    p = command("generate-master-key", cmd_generate_master_key,
                f"print a new random {ENV_VAR} entry (KEYID:BASE64KEY)")
    p.add_argument("--id", help="the new master key's id (default: k + UTC timestamp)")
