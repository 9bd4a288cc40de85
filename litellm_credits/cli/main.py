"""The ``litellm-credits`` command for operators: the parser, dispatch and exit codes.

Human tables by default, ``--json`` for machines. Every refusal prints one
clear line on stderr and exits non-zero: 2 for configuration errors, an
unreachable database and usage errors, 1 for everything else refused. Key
material is read from stdin or a hidden prompt, never from argv.

The subcommands live in :mod:`.ops` (migrate, verify, reconcile),
:mod:`.ledger` (grant, balance, history, usage, levels, tiers, packages,
settings) and :mod:`.keys` (BYOK keys); what they share is in :mod:`.common`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from litellm_credits import errors, settings
from litellm_credits.cli import keys, ledger, ops
from litellm_credits.cli.common import Context, Handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litellm-credits",
        description="Prepaid credits for the LiteLLM proxy. The database is "
        "CREDITS_DATABASE_URL (or DATABASE_URL).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(handler=handler)
        return p

    for register in (ops.register_schema, ledger.register, keys.register,
                     ops.register_reconcile):
        register(sub, add)
    return parser


async def _run(args: argparse.Namespace) -> int:
    ctx = Context(settings.load())
    try:
        handler: Handler = args.handler
        return await handler(args, ctx)
    finally:
        await ctx.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except errors.CreditsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, errors.ConfigError | errors.DatabaseUnavailable) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover - python -m litellm_credits.cli.main
    sys.exit(main())
