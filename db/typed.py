"""Typed views of two things SQLAlchemy's annotations leave looser than what it returns.

- ``Session.execute()`` is typed as returning ``Result`` whatever the statement; for an UPDATE, DELETE or INSERT
  it returns a ``CursorResult``, which alone carries ``rowcount``.
- A mapped class's ``__table__`` is typed as ``FromClause``; for our declarative models it is a ``Table``, which
  ``insert()`` / ``update()`` accept.

Both are checked at run time here instead of being cast away at each call site.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import CursorResult, Result


def rows_changed(result: Result[Any]) -> int:
    """The number of rows the DML statement behind ``result`` matched (its cursor's ``rowcount``)."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"rows_changed() needs the result of an UPDATE/DELETE/INSERT, got {type(result).__name__}")
    return result.rowcount


def table_of(model: type[Any]) -> Table:
    """The ``Table`` a declarative model is mapped to, for Core statements (executemany, INSERT ... RETURNING)."""
    table = model.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to a plain Table")
    return table
