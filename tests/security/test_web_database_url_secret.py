"""The database password never reaches the terminal: `opendeep db upgrade` run as an admin would, with a
DATABASE_URL that is wrong in each way we know, prints one line with the password as ***.

Before: `DATABASE_URL='postgres://u:s3cret@host/db': expected ...` (the whole URL quoted back), and a URL the
driver could not use ended in a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret"


def opendeep(*args: str, database_url: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opendeep.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                            "DATABASE_URL": database_url})


@pytest.mark.parametrize("database_url, says", [
    (f"postgres://u:{SECRET}@db.invalid/opendeep", "expected sqlite+aiosqlite"),            # wrong scheme
    (f"postgresql://u:{SECRET}@db.invalid/opendeep", "expected sqlite+aiosqlite"),          # no driver
    (f" postgresql+asyncpg://u:{SECRET}@db.invalid/opendeep", "expected sqlite+aiosqlite"),  # a stray space
    (f"postgresql+asyncpg://u:{SECRET}@db.invalid:54x2/opendeep", "port"),
    (f"postgresql+asyncpg://u:{SECRET}@db.invalid/opendeep?bad", "cannot use the database"),  # no such host
    (f"postgresql+asyncpg://u:{SECRET}@127.0.0.1:1/opendeep", "cannot use the database"),      # nobody listens
    (f"postgresql+asyncpg://u:{SECRET}%40x@127.0.0.1:1/opendeep", "cannot use the database"),  # encoded '@'
    (f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1:5432/opendeep_does_not_exist", "does not exist"),
])
def test_an_unusable_database_url_is_reported_in_one_line_without_its_password(tmp_path, database_url, says):
    result = opendeep("db", "upgrade", database_url=database_url, cwd=tmp_path)
    assert result.returncode in (1, 2)
    assert SECRET not in result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("opendeep: ") and says in last and ":***@" in last, result.stderr
    assert "Traceback" not in result.stderr
