"""What the `opendeep` command says when something is wrong: one line naming the setting, the file or the
database and what to do; help for every argument (issue 15, item 15)."""

import select
import signal
import socket
import subprocess
import sys

from opendeep import __version__
from opendeep.cli import build_parser
from tests.test_cli import ROOT, _make_user, run_cli

UNREACHABLE_PG = "postgresql+asyncpg://opendeep:s3cret-pw@127.0.0.1:9/opendeep"   # port 9: discard, closed


def _line_within(stream, seconds: float) -> str:
    """The next line of a subprocess's pipe; fails the test instead of hanging when none comes."""
    ready, _, _ = select.select([stream], [], [], seconds)
    assert ready, f"no line from the process in {seconds} s"
    return stream.readline()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_version_prints_the_package_version(tmp_path):
    result = run_cli(["--version"], "sqlite+aiosqlite:///x.db", tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, f"opendeep {__version__}")


def test_every_positional_argument_and_user_option_has_help_text():
    parser = build_parser()
    subcommands = {"dnd import": ["file", "--user"], "dnd export": ["--user"], "tasks import": ["file", "--user"],
                   "user add": ["name"]}
    for path, names in subcommands.items():
        action = parser
        for word in path.split():
            action = next(a for a in action._actions if a.dest.endswith("command")).choices[word]
        for name in names:
            argument = next(a for a in action._actions if name in a.option_strings or a.dest == name)
            assert argument.help and len(argument.help) > 10, (path, name)
    tasks = next(a for a in parser._actions if a.dest == "command").choices["tasks"]
    assert tasks.description and "campaign" in tasks.description


def test_a_number_setting_that_is_not_a_number_names_the_setting_and_what_is_expected(tmp_path):
    result = run_cli(["db", "upgrade"], "sqlite+aiosqlite:///x.db", tmp_path, MAX_CONCURRENT_CALLS="abc")
    assert result.returncode == 2
    assert result.stderr.strip() == ("opendeep: invalid setting MAX_CONCURRENT_CALLS='abc': expected a whole "
                                     "number of at least 1, e.g. 4")
    assert "invalid literal" not in result.stderr


def test_a_bad_default_region_is_one_line(tmp_path):
    result = run_cli(["db", "upgrade"], "sqlite+aiosqlite:///x.db", tmp_path, DEFAULT_REGION="USA")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "DEFAULT_REGION='USA'" in result.stderr


def test_db_upgrade_against_an_unreachable_postgresql_is_one_line_without_the_password(tmp_path):
    result = run_cli(["db", "upgrade"], UNREACHABLE_PG, tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("opendeep: cannot use the database at postgresql+asyncpg://opendeep:***@")
    assert "s3cret-pw" not in result.stderr and "check DATABASE_URL" in result.stderr


def test_a_sqlite_file_in_a_missing_folder_is_named_in_one_line(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'no-such-folder' / 'opendeep.db'}"
    for command in (["db", "upgrade"], ["serve", "--only", "web"]):
        result = run_cli(command, url, tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"folder that does not exist ({tmp_path / 'no-such-folder'})" in result.stderr


def test_db_upgrade_prints_no_alembic_chatter(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    first = run_cli(["db", "upgrade"], url, tmp_path)
    again = run_cli(["db", "upgrade"], url, tmp_path)
    assert first.returncode == again.returncode == 0
    assert "alembic" not in first.stderr
    assert [line for line in first.stderr.splitlines() if "INFO" in line] == [
        line for line in first.stderr.splitlines() if "database schema migrated from empty to" in line]
    assert again.stderr == ""


def test_serve_waits_for_an_unreachable_database_one_line_per_try_and_no_traceback(tmp_path):
    environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DATABASE_URL": UNREACHABLE_PG,
                   "WEB_BIND": f"127.0.0.1:{_free_port()}"}
    process = subprocess.Popen([sys.executable, "-m", "opendeep.cli", "serve", "--only", "web,aftercall"],
                               cwd=tmp_path, env=environment,
                               stderr=subprocess.PIPE, text=True)
    try:
        lines = [_line_within(process.stderr, 60) for _ in range(2)]   # the first try, and the one after 1 s
    finally:
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=60)
    for line in lines + rest.splitlines():
        if line.strip():
            assert "waiting for the database: cannot use the database at postgresql+asyncpg://opendeep:***@" \
                in line, line
            assert "next try in" in line and "s3cret-pw" not in line
    assert "Traceback" not in rest
    assert process.returncode == 0, rest


async def test_a_csv_with_several_bad_lines_lists_every_one(database_url, sessions, tmp_path):
    await _make_user(sessions)
    csv_file = tmp_path / "targets.csv"
    rows = ["name,phone_number,objective"] + [f"Shop {i},bad-{i},ask" for i in range(60)] + ["Ok,+14155550100,ask"]
    csv_file.write_text("\n".join(rows) + "\n")
    result = run_cli(["tasks", "import", str(csv_file), "--user", "alice", "--new-campaign", "shops"],
                     database_url, tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 61
    for number, line in enumerate(lines[:60], start=2):
        assert line.removeprefix("opendeep: ").startswith(f"{csv_file}: line {number}: 'bad-{number - 2}' "), line
        assert "E.164" in line
    assert lines[-1] == "60 bad line(s); nothing was imported"
