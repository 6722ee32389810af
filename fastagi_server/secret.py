"""The FastAGI shared secret: every AGI URL of the rendered dialplan carries it (`...?secret=...`), and the server
refuses a session without it. From FASTAGI_SECRET, else from ./fastagi.secret, made on first use (mode 0600),
so `opendeep dialplan render` and `opendeep serve` run in one folder agree without configuration."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from opendeep.settings import Settings

SECRET_FILE = "fastagi.secret"
_SAFE = re.compile(r"[A-Za-z0-9_.~-]{16,128}")   # goes into a URL and a dialplan line as it is


def fastagi_secret(settings: Settings, directory: Path = Path(".")) -> str:
    """The secret Asterisk must send; raises ValueError for a FASTAGI_SECRET that cannot go into a URL."""
    if settings.fastagi_secret:
        if not _SAFE.fullmatch(settings.fastagi_secret):
            raise ValueError("FASTAGI_SECRET: use 16-128 letters, digits, '-', '_', '.' or '~'")
        return settings.fastagi_secret
    path = directory / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text(encoding="ascii").strip()
        if not _SAFE.fullmatch(secret):
            raise ValueError(f"{path} does not hold a usable FastAGI secret; delete it to make a new one") from None
        return secret
    secret = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secret + "\n")
    return secret
