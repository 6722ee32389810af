"""The `opendeep` command line, run as a user would run it (a subprocess with an environment)."""

import subprocess
import sys
from pathlib import Path

import pytest

from db import repo
from opendeep.passwords import verify_password

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, database_url, tmp_path, stdin="", **env):
    environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DATABASE_URL": database_url, **env}
    return subprocess.run([sys.executable, "-m", "opendeep.cli", *args], cwd=tmp_path, input=stdin,
                          env=environment, capture_output=True, text=True, timeout=120)


def test_db_upgrade_on_a_new_sqlite_file(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    result = run_cli(["db", "upgrade"], url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "latest schema" in result.stdout
    again = run_cli(["db", "upgrade"], url, tmp_path)
    assert again.returncode == 0, again.stderr


async def test_user_add_reads_the_password_from_stdin_and_refuses_a_duplicate(database_url, sessions, tmp_path):
    result = run_cli(["user", "add", "alice", "--password-stdin"], database_url, tmp_path,
                     stdin="correct horse\n")
    assert result.returncode == 0, result.stderr
    async with sessions() as session:
        user = await repo.get_user_by_username(session, "alice")
    assert user is not None and verify_password("correct horse", user.password_hash)
    assert not verify_password("wrong", user.password_hash)

    duplicate = run_cli(["user", "add", "alice", "--password-stdin"], database_url, tmp_path,
                        stdin="another one\n")
    assert duplicate.returncode == 1
    assert duplicate.stderr.strip() == "opendeep: user 'alice' already exists"


@pytest.mark.parametrize("name, password, message", [
    ("alice", "short\n", "opendeep: the password must have at least 8 characters"),
    ("bad name!", "long enough\n", "opendeep: invalid user name 'bad name!': use 1-64 letters, digits, '.', '_' or '-'"),
])
def test_user_add_rejects_bad_input_with_exit_2(database_url, engine, tmp_path, name, password, message):
    result = run_cli(["user", "add", name, "--password-stdin"], database_url, tmp_path, stdin=password)
    assert (result.returncode, result.stderr.strip()) == (2, message)


def test_serve_only_rejects_an_unknown_component(tmp_path):
    result = run_cli(["serve", "--only", "fastagi,pbx"], f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", tmp_path)
    assert result.returncode == 2
    assert "unknown component(s) pbx" in result.stderr
