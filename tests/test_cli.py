"""The `opendeep` command line, run as a user would run it (a subprocess with an environment)."""

import subprocess
import sys
from pathlib import Path

import pytest

from db import repo
from opendeep.passwords import verify_password
from tests.doubles.webui_client import PASSWORD, WebClient, make_runtime
from webui.app import create_app

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



async def test_user_add_admin_makes_an_administrator_the_users_page_lets_in(settings_env, engine, sessions,
                                                                             tmp_path):
    for name, flags in (("root", ["--admin"]), ("alice", [])):
        made = run_cli(["user", "add", name, "--password-stdin", *flags], settings_env["DATABASE_URL"], tmp_path,
                       stdin=PASSWORD + "\n")
        assert made.returncode == 0, made.stderr
    app = create_app(make_runtime(settings_env, engine, sessions))
    for name, status in (("root", 200), ("alice", 404)):   # 404: the page does not exist for a non-admin
        client = WebClient(app)
        try:
            await client.login(name)
            assert (await client.http.get("/api/admin/users")).status_code == status
        finally:
            await client.aclose()

@pytest.mark.parametrize("name, password, message", [
    ("alice", "short\n", "opendeep: the password must have at least 8 characters"),
    ("bad name!", "long enough\n",
     "opendeep: invalid user name 'bad name!': use 1-64 letters, digits, '.', '_' or '-'"),
])
def test_user_add_rejects_bad_input_with_exit_2(database_url, engine, tmp_path, name, password, message):
    result = run_cli(["user", "add", name, "--password-stdin"], database_url, tmp_path, stdin=password)
    assert (result.returncode, result.stderr.strip()) == (2, message)


def test_serve_only_rejects_an_unknown_component(tmp_path):
    result = run_cli(["serve", "--only", "fastagi,pbx"], f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", tmp_path)
    assert result.returncode == 2
    assert "unknown component(s) pbx" in result.stderr


async def _make_user(sessions, name="alice"):
    async with sessions() as session:
        user = await repo.create_user(session, name, "x")
        await session.commit()
        return user.id


async def test_dnd_import_then_export_round_trips(database_url, sessions, tmp_path):
    alice = await _make_user(sessions)
    csv_file = tmp_path / "dnd.csv"
    csv_file.write_text("phone_number,reason\n+14155550101,asked twice\n+1 415 555 0102,\n")
    result = run_cli(["dnd", "import", str(csv_file), "--user", "alice"], database_url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "imported 2 number(s) into alice's DND list (2 new)" in result.stdout
    async with sessions() as session:
        assert [e.phone_number for e in await repo.list_dnd(session, alice)] == ["+14155550101", "+14155550102"]
    exported = run_cli(["dnd", "export", "--user", "alice"], database_url, tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "+14155550101" in exported.stdout and "asked twice" in exported.stdout


async def test_a_bad_csv_line_is_named_and_nothing_is_imported(database_url, sessions, tmp_path):
    alice = await _make_user(sessions)
    csv_file = tmp_path / "targets.csv"
    csv_file.write_text("name,phone_number,objective\nDr. A,+14155550101,book a cleaning\n"
                        "Dr. B,not-a-number,book a cleaning\nDr. C,+14155550103,book a cleaning\n")
    result = run_cli(["tasks", "import", str(csv_file), "--user", "alice", "--new-campaign", "dentists"],
                     database_url, tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"opendeep: {csv_file}: line 3")
    assert "not-a-number" in result.stderr
    async with sessions() as session:
        assert list(await repo.list_campaigns(session, alice)) == []
        assert list(await repo.list_tasks(session, alice)) == []


async def test_tasks_import_into_a_new_campaign(database_url, sessions, tmp_path):
    alice = await _make_user(sessions)
    csv_file = tmp_path / "targets.csv"
    csv_file.write_text("name,phone_number,objective\nDr. A,+14155550101,book a cleaning\n"
                        "Dr. C,+14155550103,book a cleaning\n")
    result = run_cli(["tasks", "import", str(csv_file), "--user", "alice", "--new-campaign", "dentists",
                      "--goal", "a cleaning next week"], database_url, tmp_path)
    assert result.returncode == 0, result.stderr
    async with sessions() as session:
        (campaign,) = await repo.list_campaigns(session, alice)
        tasks = await repo.list_tasks(session, alice, campaign.id)
    assert (campaign.name, campaign.goal) == ("dentists", "a cleaning next week")
    assert [(t.target_name, t.phone_number, t.objective) for t in tasks] == [
        ("Dr. A", "+14155550101", "book a cleaning"), ("Dr. C", "+14155550103", "book a cleaning")]


async def test_tasks_import_refuses_another_users_campaign(database_url, sessions, tmp_path):
    alice = await _make_user(sessions)
    await _make_user(sessions, "bob")
    async with sessions() as session:
        campaign = await repo.create_campaign(session, alice, name="alice's")
        await session.commit()
    csv_file = tmp_path / "targets.csv"
    csv_file.write_text("name,phone_number\nDr. A,+14155550101\n")
    result = run_cli(["tasks", "import", str(csv_file), "--user", "bob", "--campaign", str(campaign.id)],
                     database_url, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == f"opendeep: campaign {campaign.id} not found for user 'bob'"


def test_unknown_user_is_named(database_url, engine, tmp_path):
    result = run_cli(["dnd", "export", "--user", "nobody"], database_url, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "opendeep: no user 'nobody' (create one with: opendeep user add nobody)"


def test_dialplan_render_uses_the_configured_addresses(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    result = run_cli(["dialplan", "render", "--out", str(tmp_path / "asterisk"), "--amd"], url, tmp_path,
                     FASTAGI_ADVERTISE="10.1.2.3:4573", AMI_USERNAME="od-ami", AMI_SECRET="s3cret-value")
    assert result.returncode == 0, result.stderr
    extensions = (tmp_path / "asterisk" / "extensions_opendeep.conf").read_text()
    manager = (tmp_path / "asterisk" / "manager_opendeep.conf").read_text()
    assert "agi://10.1.2.3:4573/call-start" in extensions and "127.0.0.1:4573" not in extensions
    assert "Set(OPENDEEP_AMD=1)" in extensions
    assert "[od-ami]" in manager


def test_dialplan_render_refuses_an_address_asterisk_cannot_use(tmp_path):
    result = run_cli(["dialplan", "render"], f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", tmp_path,
                     FASTAGI_ADVERTISE="not an address")
    assert result.returncode == 2
    assert result.stderr.startswith("opendeep: FASTAGI_ADVERTISE/FASTAGI_BIND 'not an address'")
