"""Issue 14 item 6: a query outside db/ either filters on user_id itself, or says in a `# tenant-safe:` comment
why it needs no such filter (it serves every tenant and keeps each row's user_id, or it addresses a row by a key
only its own call knows, ...). The repository (db/repo.py, db/task_life.py) is the way in otherwise; its functions
are covered by tests/test_repo_isolation.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("ami_controller", "fastagi_server", "audiosocket", "webui", "opendeep")
QUERIES = {"select", "update", "insert", "delete"}
NOTE = "tenant-safe:"
LOOK_ABOVE = 3   # lines above a statement where its note may stand
# Modules another engineer is restructuring today (issue 14 item 5 splits manager.py); their queries address calls
# by the ids and ActionIDs the AMI controller generated itself. To be annotated after that split lands.
NOT_YET: set[str] = set()


def _queries(path: Path) -> list[tuple[int, str]]:
    """(line, verdict) of each statement that builds a query and neither filters on user_id nor carries a note."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    found = []
    for statement in ast.walk(tree):
        if not isinstance(statement, ast.stmt) or isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                         ast.ClassDef, ast.If, ast.For, ast.While,
                                                                         ast.With, ast.AsyncWith, ast.AsyncFor,
                                                                         ast.Try)):
            continue
        calls = [node for node in ast.walk(statement) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Name) and node.func.id in QUERIES]
        if not calls:
            continue
        source = "\n".join(lines[statement.lineno - 1:statement.end_lineno])
        above = "\n".join(lines[max(statement.lineno - 1 - LOOK_ABOVE, 0):statement.lineno - 1])
        if "user_id" in source or NOTE in source or NOTE in above:
            continue
        found.append((statement.lineno, source.strip().splitlines()[0]))
    return found


def test_every_query_outside_db_filters_on_user_id_or_says_why_it_is_tenant_safe():
    unexplained = [f"{path.relative_to(ROOT)}:{line}: {first}"
                   for part in PARTS for path in sorted((ROOT / part).rglob("*.py"))
                   for line, first in _queries(path) if str(path.relative_to(ROOT)) not in NOT_YET]
    assert unexplained == []


def test_the_check_finds_a_query_without_user_id_or_note(tmp_path):
    """Not vacuous: an unscoped query is reported, and a note or a user_id filter clears it."""
    module = tmp_path / "m.py"
    module.write_text("def f(session):\n    return select(Task).where(Task.id == 1)\n")
    assert [line for line, _ in _queries(module)] == [2]
    module.write_text("def f(session):\n    # tenant-safe: every tenant's, by design\n"
                      "    return select(Task).where(Task.id == 1)\n")
    assert _queries(module) == []
    module.write_text("def f(session, user_id):\n    return select(Task).where(Task.user_id == user_id)\n")
    assert _queries(module) == []
