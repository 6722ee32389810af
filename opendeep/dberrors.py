"""A database that cannot be reached, said in one line: for the CLI, `serve`'s start and the background loops.

A driver's connection error arrives wrapped in SQLAlchemy's, with a traceback of 100+ lines that says nothing
an operator can act on beyond its last line. These helpers find that line, hide the URL's password, and tell
a connection problem (retry later, fix DATABASE_URL) from a bug (keep the traceback).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from opendeep.settings import hide_url_password


def sqlite_folder_problem(database_url: str) -> str | None:
    """For a SQLite URL whose file's folder does not exist, the one line saying so; else None."""
    if not database_url.startswith("sqlite"):
        return None
    path = unquote(urlsplit(database_url).path)
    if not path or path in ("/", "/:memory:") or ":memory:" in database_url:
        return None
    # sqlite+aiosqlite:///relative.db -> path "/relative.db"; ////abs.db -> "//abs.db"
    file = Path(path[1:]) if path.startswith("/") else Path(path)
    folder = file.parent
    if not folder.is_dir():
        return (f"the SQLite database {file} is in a folder that does not exist ({folder}): create it "
                f"(mkdir -p {folder}) or change DATABASE_URL")
    return None


def unreachable_reason(exc: BaseException) -> str | None:
    """The one-line reason when `exc` means the database cannot be reached or opened (refused, unknown host,
    wrong password, missing file); None for any other error (a bug, whose traceback is worth keeping)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (OSError, TimeoutError)) and not isinstance(current, FileExistsError):
            return _first_line(current)
        if isinstance(current, (OperationalError, InterfaceError)) or (
                isinstance(current, DBAPIError) and current.connection_invalidated):
            return _first_line(getattr(current, "orig", None) or current)
        if type(current).__name__ in ("InvalidPasswordError", "InvalidAuthorizationSpecificationError",
                                      "InvalidCatalogNameError", "CannotConnectNowError",
                                      "ConnectionDoesNotExistError", "TooManyConnectionsError"):
            return _first_line(current)   # asyncpg's own errors, before SQLAlchemy wraps them
        current = current.__cause__ or current.__context__
    return None


def describe_unreachable(database_url: str, reason: str) -> str:
    """"cannot use the database at URL: reason", the password hidden (the wording `db upgrade` always had)."""
    return hide_url_password(f"cannot use the database at {database_url}: {reason}", database_url)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
