"""``litellm-credits keys ...`` as a subprocess: the key goes in on stdin, never argv."""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest

from litellm_credits.byok.masterkeys import ENV_VAR, generate_key_entry
from litellm_credits.byok.refs import KeyRowRef
from litellm_credits.byok.vault import Vault
from litellm_credits.cli.main import build_parser

SECRET = "sk-proj-PANGOLIN-x4Rt8Vn2Lq6Zw0Ys-cli-only-d3b9"
SECRET_2 = "sk-or-v1-NARWHAL-m5Jk7Pq1Wz3Rt9-cli-second-61aa"
K1 = generate_key_entry("k1")
K2 = generate_key_entry("k2")


def env_for(db_url: str | None, keys: str | None = K1) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CREDITS_") and k != "DATABASE_URL"}
    if db_url is not None:
        env["CREDITS_DATABASE_URL"] = db_url
    if keys is not None:
        env[ENV_VAR] = keys
    return env


def cli(
    args: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "litellm_credits.cli", *args],
        input=stdin if stdin is not None else "",
        capture_output=True, text=True, env=env, timeout=60,
    )


def assert_no_secret(done: subprocess.CompletedProcess[str], *secrets: str) -> None:
    for secret in secrets:
        assert secret not in done.stdout and secret not in done.stderr
        assert secret[8:-6] not in done.stdout and secret[8:-6] not in done.stderr
        assert all(secret not in str(arg) for arg in done.args)


def keys_parser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    keys = top.choices["keys"]
    group = next(a for a in keys._actions if isinstance(a, argparse._SubParsersAction))
    sub: argparse.ArgumentParser = group.choices[name]
    return sub


def test_keys_add_has_no_argument_that_could_carry_the_key() -> None:
    parser = keys_parser("add")
    dests = {a.dest for a in parser._actions}
    assert dests == {"help", "json", "user", "provider", "name", "default",
                     "fallback_to_platform"}
    value_options = {opt for a in parser._actions if a.option_strings and a.nargs != 0
                     for opt in a.option_strings}
    assert value_options == {"--name"}
    with pytest.raises(SystemExit):
        parser.parse_args(["alice", "openai", "--name", "main", SECRET])


def test_add_reads_stdin_and_list_shows_only_the_hint(
    db_url: str, db_conn: psycopg.Connection[Any]
) -> None:
    env = env_for(db_url)
    added = cli(["keys", "add", "alice", "openai", "--name", "main", "--json"], env,
                stdin=SECRET + "\n")
    assert added.returncode == 0, added.stderr
    assert_no_secret(added, SECRET)
    info = json.loads(added.stdout)
    assert info["hint"] == "…" + SECRET[-4:] and info["is_default"] is True
    assert "now the default" in added.stderr

    [(blob, key_id)] = db_conn.execute(
        "SELECT encrypted_key, encryption_key_id FROM user_provider_keys").fetchall()
    # Exactly the piped key, without its trailing newline.
    assert Vault.from_env({ENV_VAR: K1}).decrypt(
        blob, key_id, KeyRowRef("alice", "openai", "main")) == SECRET

    listed = cli(["keys", "list", "alice", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    assert_no_secret(listed, SECRET)
    [row] = json.loads(listed.stdout)
    assert row["hint"] == "…" + SECRET[-4:]
    assert (row["provider"], row["name"], row["is_active"]) == ("openai", "main", True)
    assert "encrypted_key" not in row

    table = cli(["keys", "list", "alice"], env)
    assert table.returncode == 0 and "…" + SECRET[-4:] in table.stdout
    assert_no_secret(table, SECRET)


def test_refusals_never_echo_the_key(db_url: str, db_conn: psycopg.Connection[Any]) -> None:
    env = env_for(db_url)
    ok = cli(["keys", "add", "alice", "openai", "--name", "main"], env, stdin=SECRET)
    assert ok.returncode == 0, ok.stderr
    dup = cli(["keys", "add", "alice", "openai", "--name", "main"], env, stdin=SECRET_2)
    assert dup.returncode == 1
    assert dup.stderr.startswith("error: ") and "already exists and is active" in dup.stderr
    assert_no_secret(dup, SECRET, SECRET_2)

    two_lines = cli(["keys", "add", "alice", "openai", "--name", "x"], env,
                    stdin=SECRET_2 + "\n" + SECRET_2 + "\n")
    assert two_lines.returncode == 1 and "U+000A" in two_lines.stderr
    assert_no_secret(two_lines, SECRET_2)

    empty = cli(["keys", "add", "alice", "openai", "--name", "y"], env, stdin="\n")
    assert empty.returncode == 1 and "no provider key was given" in empty.stderr

    bad_provider = cli(["keys", "add", "alice", "Open AI", "--name", "z"], env, stdin=SECRET_2)
    assert bad_provider.returncode == 1 and "provider" in bad_provider.stderr
    assert_no_secret(bad_provider, SECRET_2)
    assert db_conn.execute("SELECT count(*) FROM user_provider_keys").fetchone() == (1,)


def test_missing_master_key_exits_2_with_the_recipe(
    db_url: str, db_conn: psycopg.Connection[Any]
) -> None:
    env = env_for(db_url, keys=None)
    for args in (["keys", "add", "alice", "openai", "--name", "main"], ["keys", "rotate"]):
        done = cli(args, env, stdin=SECRET)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: {ENV_VAR} is not set")
        assert f'export {ENV_VAR}="k1:$(python -c' in done.stderr
        assert "Traceback" not in done.stderr
        assert_no_secret(done, SECRET)
    assert db_conn.execute("SELECT count(*) FROM user_provider_keys").fetchone() == (0,)

    bad = cli(["keys", "add", "alice", "openai", "--name", "main"],
              env_for(db_url, keys="k1:not-base64!"), stdin=SECRET)
    assert bad.returncode == 2 and "is not valid base64" in bad.stderr

    # Listing needs no master key.
    assert cli(["keys", "list", "alice"], env).returncode == 0


def test_revoke_set_default_and_rotate(db_url: str, db_conn: psycopg.Connection[Any]) -> None:
    env = env_for(db_url)
    for name, secret in (("a", SECRET), ("b", SECRET_2)):
        done = cli(["keys", "add", "alice", "openrouter", "--name", name], env, stdin=secret)
        assert done.returncode == 0, done.stderr

    sd = cli(["keys", "set-default", "alice", "openrouter", "--name", "b", "--json"], env)
    assert sd.returncode == 0, sd.stderr
    assert json.loads(sd.stdout)["is_default"] is True

    rv = cli(["keys", "revoke", "alice", "openrouter", "--name", "b", "--json"], env)
    assert rv.returncode == 0, rv.stderr
    result = json.loads(rv.stdout)
    assert result["is_active"] is False and result["was_default"] is True
    assert "no default openrouter key now" in rv.stderr and "'a'" in rv.stderr

    missing = cli(["keys", "revoke", "alice", "openrouter", "--name", "zzz"], env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr

    env2 = env_for(db_url, keys=f"{K2},{K1}")
    rot = cli(["keys", "rotate", "--json", "--batch-size", "1"], env2)
    assert rot.returncode == 0, rot.stderr
    report = json.loads(rot.stdout)
    assert (report["rotated"], report["remaining"], report["complete"]) == (2, 0, True)
    assert db_conn.execute(
        "SELECT array_agg(DISTINCT encryption_key_id) FROM user_provider_keys").fetchone() == (
        ["k2"],)
    again = cli(["keys", "rotate"], env2)
    assert again.returncode == 0 and "already_current" in again.stdout

    # A row rotation cannot read makes the command fail, naming the row, not the key.
    db_conn.execute("UPDATE user_provider_keys SET encryption_key_id = 'k1', "
                    "encrypted_key = set_byte(encrypted_key, 30, 255 - get_byte(encrypted_key, 30))"
                    " WHERE key_name = 'a'")
    broken = cli(["keys", "rotate"], env2)
    assert broken.returncode == 1
    assert "error: key row" in broken.stderr and "could not be decrypted" in broken.stderr
    assert_no_secret(broken, SECRET, SECRET_2)


def test_generate_master_key_prints_a_usable_entry() -> None:
    done = cli(["keys", "generate-master-key", "--id", "k7"], env_for(None, keys=None))
    assert done.returncode == 0, done.stderr
    entry = done.stdout.strip()
    assert entry.startswith("k7:") and "\n" not in entry
    vault = Vault.from_env({ENV_VAR: entry})
    assert vault.active_key_id == "k7"
    assert "keys rotate" in done.stderr and entry not in done.stderr

    bad = cli(["keys", "generate-master-key", "--id", "bad id"], env_for(None, keys=None))
    assert bad.returncode == 2 and "key id" in bad.stderr


def _reap(pid: int, timeout: float = 30) -> int:
    """Wait for the child; kill it (by its pid) if it does not finish in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def test_terminal_prompt_hides_the_key(db_url: str, db_conn: psycopg.Connection[Any]) -> None:
    """With a terminal on stdin, getpass prompts with echo off: the key is never shown."""
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal
        try:
            os.execve(sys.executable, [sys.executable, "-m", "litellm_credits.cli", "keys",
                                       "add", "bob", "anthropic", "--name", "tty"],
                      env_for(db_url))
        finally:
            os._exit(127)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"input hidden" not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                seen += os.read(fd, 4096)
        assert b"input hidden" in seen, seen
        os.write(fd, SECRET.encode() + b"\n")
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 0.5)[0]:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        status = _reap(pid)
        os.close(fd)
    text = seen.decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert SECRET not in text and SECRET[8:-6] not in text
    assert "…" + SECRET[-4:] in text
    [(blob, key_id)] = db_conn.execute(
        "SELECT encrypted_key, encryption_key_id FROM user_provider_keys").fetchall()
    assert Vault.from_env({ENV_VAR: K1}).decrypt(
        blob, key_id, KeyRowRef("bob", "anthropic", "tty")) == SECRET
