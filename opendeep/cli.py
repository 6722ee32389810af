"""`opendeep` command line: serve, db upgrade, user add, dialplan render, dnd import/export, tasks import.

Every failure a user can cause ends in one line on stderr naming what to fix, and exit code 2 (usage or
configuration) or 1 (the operation failed); nothing is half-written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from opendeep import __version__
from opendeep.dberrors import describe_unreachable, sqlite_folder_problem, unreachable_reason
from opendeep.settings import Settings, SettingsError, hide_url_password, load_settings

EXIT_FAILED, EXIT_USAGE = 1, 2


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opendeep", description="AI outbound calling on Asterisk")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--env-file", default=".env", help="dotenv file to read (default: .env)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the components (default: all of them) in one process")
    serve.add_argument("--only", help="comma-separated subset: fastagi,audiosocket,ami,aftercall,webhooks,web")

    db = commands.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="migrate the database to the latest schema")

    user = commands.add_parser("user", help="accounts").add_subparsers(dest="user_command", required=True)
    add = user.add_parser("add", help="create a user (password from a prompt or --password-stdin)")
    add.add_argument("name", help="the new user's login name (1-64 letters, digits, '.', '_' or '-')")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument("--admin", action="store_true", help="make the user an administrator")

    dialplan = commands.add_parser("dialplan", help="Asterisk configuration").add_subparsers(
        dest="dialplan_command", required=True)
    render = dialplan.add_parser("render", help="print dialplan/ with the configured hosts and ports")
    render.add_argument("--out", type=Path, help="write the files into this folder instead of printing them")
    render.add_argument("--server", help="the ASTERISK_SERVERS entry to render for (its FastAGI address and AMI "
                        "login); default: the first")
    render.add_argument("--amd", action="store_true",
                        help="turn on answering-machine detection (AMD) for answered calls")

    dnd = commands.add_parser("dnd", help="do-not-call list").add_subparsers(dest="dnd_command", required=True)
    dnd_import = dnd.add_parser("import", help="add numbers from a CSV (phone_number[,reason])")
    dnd_import.add_argument("file", type=Path, help="CSV file: phone_number[,reason] per line, UTF-8; national "
                                                    "numbers of the user's country (or DEFAULT_REGION) are accepted")
    dnd_import.add_argument("--user", required=True, help="login name of the user whose list it is")
    dnd_export = dnd.add_parser("export", help="print the DND list as CSV")
    dnd_export.add_argument("--user", required=True, help="login name of the user whose list it is")

    tasks = commands.add_parser("tasks", help="call tasks: import targets from a CSV into a campaign",
                                description="Call tasks: one per target (a person or business to call) of a "
                                            "campaign.").add_subparsers(dest="tasks_command", required=True)
    tasks_import = tasks.add_parser("import", help="add targets from a CSV to a campaign")
    tasks_import.add_argument("file", type=Path, help="CSV file with a header: name,phone_number[,objective,"
                                                      "language,max_attempts,...], UTF-8")
    tasks_import.add_argument("--user", required=True, help="login name of the user who owns the campaign")
    target = tasks_import.add_mutually_exclusive_group(required=True)
    target.add_argument("--campaign", type=int, help="id of an existing campaign of that user")
    target.add_argument("--new-campaign", metavar="NAME", help="create a campaign with this name")
    tasks_import.add_argument("--goal", default="", help="goal of the new campaign")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(dotenv=Path(args.env_file))
    except SettingsError as exc:
        print(f"opendeep: invalid setting {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":   # alembic logs 7 INFO lines of set-up on import and every run
        logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.command in ("serve", "db", "user", "dnd", "tasks") and (
            problem := sqlite_folder_problem(settings.database_url)):
        print(f"opendeep: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from opendeep.serve import loop_factory

    try:
        factory = loop_factory(settings)
    except RuntimeError as exc:
        print(f"opendeep: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_dispatch(args, settings)) or 0
    except CliError as exc:
        print(f"opendeep: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int | None:
    if args.command == "serve":
        return await _serve(settings, args.only)
    if args.command == "dialplan":
        return _dialplan_render(_for_server(settings, args.server), args.out, args.amd)
    with _database_errors(settings.database_url):
        if args.command == "db":
            from db.migrate import upgrade
            await upgrade(settings.database_url)
            print("database is at the latest schema")
            return 0
        if args.command == "user":
            return await _user_add(settings, args.name, args.password_stdin, args.admin)
        if args.command == "dnd":
            return await _dnd(settings, args)
        if args.command == "tasks":
            return await _tasks_import(settings, args)
    raise CliError(f"unknown command {args.command}", EXIT_USAGE)  # pragma: no cover - argparse prevents it


@contextlib.contextmanager
def _database_errors(url: str) -> Iterator[None]:
    """A database that cannot be reached or used becomes one line naming it, with its password hidden (the
    driver's own message may quote it too)."""
    try:
        yield
    except (OSError, SQLAlchemyError) as exc:
        unreachable = unreachable_reason(exc)
        if unreachable is not None:
            raise CliError(describe_unreachable(url, unreachable) + " (check DATABASE_URL)") from None
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        message = f"cannot use the database at {url}: {reason[0] if reason else type(exc).__name__}"
        raise CliError(hide_url_password(message, url) + " (check DATABASE_URL)") from None


async def _serve(settings: Settings, only: str | None) -> int:
    from opendeep.runtime import Runtime
    from opendeep.serve import parse_only, serve

    try:
        names = parse_only(only)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    await serve(Runtime.create(settings), names)
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Repeat password: "):
            raise CliError("the passwords do not match", EXIT_USAGE)
    if len(password) < 8:
        raise CliError("the password must have at least 8 characters", EXIT_USAGE)
    return password


async def _user_add(settings: Settings, name: str, password_stdin: bool, admin: bool) -> int:
    from db import repo
    from opendeep.passwords import hash_password

    if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise CliError(f"invalid user name {name!r}: use 1-64 letters, digits, '.', '_' or '-'", EXIT_USAGE)
    password = _read_password(password_stdin)
    async with _sessions(settings) as sessions, sessions() as session:
        if await repo.get_user_by_username(session, name):
            raise CliError(f"user {name!r} already exists")
        user = await repo.create_user(session, name, hash_password(password), is_admin=admin)
        await session.commit()
        print(f"created user {name!r} (id {user.id})")
    return 0


def _for_server(settings: Settings, name: str | None) -> Settings:
    """The settings as one Asterisk server's dialplan sees them: its FastAGI address and its AMI login."""
    import dataclasses

    server = settings.asterisk_server(name)
    if server is None:
        known = ", ".join(s.name for s in settings.asterisk_servers)
        raise CliError(f"--server {name!r}: not in ASTERISK_SERVERS (known: {known})", EXIT_USAGE)
    return dataclasses.replace(settings, fastagi_advertise=server.fastagi_address, ami_username=server.ami_username,
                               ami_secret=server.ami_secret)


def _dialplan_render(settings: Settings, out: Path | None, amd: bool) -> int:
    from dialplan.render import render_dialplan

    try:
        files = render_dialplan(settings, amd=amd)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if out is None:
        for name, text in files.items():
            print(f";; ---- {name}")
            print(text)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


async def _dnd(settings: Settings, args: argparse.Namespace) -> int:
    from webui.csv_import import CsvImportError, export_dnd_csv, import_dnd, parse_dnd_csv

    async with _sessions(settings) as sessions, sessions() as session:
        user_id = await _user_id(session, args.user)
        if args.dnd_command == "export":
            sys.stdout.write(await export_dnd_csv(session, user_id))
            return 0
        try:
            rows = parse_dnd_csv(_read_text(args.file), await _region_of(session, settings, user_id))
        except CsvImportError as exc:
            raise CliError(_csv_errors(args.file, exc)) from None
        added = await import_dnd(session, user_id, rows)
        await session.commit()
        print(f"imported {len(rows)} number(s) into {args.user}'s DND list ({added} new)")
    return 0


async def _tasks_import(settings: Settings, args: argparse.Namespace) -> int:
    from db import repo
    from webui.csv_import import CsvImportError, campaign_from_csv, parse_targets_csv, targets_from_csv

    text = _read_text(args.file)
    async with _sessions(settings) as sessions, sessions() as session:
        user_id = await _user_id(session, args.user)
        try:
            rows = parse_targets_csv(text, await _region_of(session, settings, user_id))
        except CsvImportError as exc:
            raise CliError(_csv_errors(args.file, exc)) from None
        # No event hub in this process: a page open in `serve` shows the new tasks from the database when it
        # next loads (the same rule builds the campaign as on the web page and in the API).
        if args.new_campaign:
            campaign, _ = await campaign_from_csv(session, None, user_id, rows, name=args.new_campaign,
                                                  goal=args.goal)
        else:
            existing = await repo.get_campaign(session, user_id, args.campaign)
            if existing is None:
                raise CliError(f"campaign {args.campaign} not found for user {args.user!r}")
            await targets_from_csv(session, None, user_id, existing, rows)
            campaign = existing
        print(f"imported {len(rows)} task(s) into campaign {campaign.id} ({campaign.name!r})")
    return 0


async def _region_of(session, settings: Settings, user_id: int) -> str | None:
    """The user's country for national numbers in their CSV (else DEFAULT_REGION)."""
    from webui.account import user_region

    return await user_region(session, settings, user_id)


def _csv_errors(path: Path, exc) -> str:
    """Every bad line of a CSV, one per line (`file: line N: why`), and what happened: nothing imported."""
    lines = [f"{path}: {error}" for error in exc.errors]
    if len(lines) > 1:
        lines.append(f"{len(exc.errors)} bad line(s); nothing was imported")
    return "\n".join(lines)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text") from None


async def _user_id(session, username: str) -> int:
    from db import repo

    user = await repo.get_user_by_username(session, username)
    if user is None:
        raise CliError(f"no user {username!r} (create one with: opendeep user add {username})")
    return user.id


class _sessions:
    """`async with _sessions(settings) as factory`: an engine for one CLI command, disposed after it."""

    def __init__(self, settings: Settings) -> None:
        from db.engine import create_engine, session_factory

        self._engine = create_engine(settings.database_url)
        self._factory = session_factory(self._engine)

    async def __aenter__(self):
        return self._factory

    async def __aexit__(self, *exc) -> None:
        await self._engine.dispose()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
