"""`opendeep dialplan render`: the shipped Asterisk files with this installation's addresses filled in.

The files in this package are valid as they are, for everything on one host (FastAGI at 127.0.0.1:4573, AMI
user `opendeep`). Rendering replaces exactly those defaults with the settings, so what the admin installs is
what the tests check.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from fastagi_server.secret import fastagi_secret
from opendeep.settings import Settings

EXTENSIONS = "extensions_opendeep.conf"
MANAGER = "manager_opendeep.conf"
DEFAULT_FASTAGI = "127.0.0.1:4573"
PLACEHOLDER_SECRET = "CHANGE_ME"
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


def shipped(name: str) -> str:
    """The text of a file as shipped in the `dialplan` package."""
    return resources.files("dialplan").joinpath(name).read_text(encoding="utf-8")


def render_dialplan(settings: Settings, *, amd: bool = False, directory: Path = Path(".")) -> dict[str, str]:
    """{file name: text} for /etc/asterisk, with FastAGI's address and secret (fastagi_server/secret.py; its
    file is looked for in `directory`) and the AMI user.

    `amd=True` turns answering-machine detection on in [opendeep-connected]. Raises ValueError for an
    address that would not be a valid `agi://host:port` in the dialplan.
    """
    fastagi = settings.fastagi_address
    if not _HOST_PORT.match(fastagi):
        raise ValueError(f"FASTAGI_ADVERTISE/FASTAGI_BIND {fastagi!r}: expected HOST:PORT that Asterisk can reach")
    if any(char in settings.dial_string_template for char in ",;()\n\r"):
        raise ValueError(f"DIAL_STRING_TEMPLATE {settings.dial_string_template!r}: a dial string cannot contain "
                         "',', ';', parentheses or line breaks in the dialplan")
    extensions = (shipped(EXTENSIONS).replace(DEFAULT_FASTAGI, fastagi)
                  .replace(f"?secret={PLACEHOLDER_SECRET},", f"?secret={fastagi_secret(settings, directory)},"))
    if amd:
        extensions = extensions.replace("same => n,Set(OPENDEEP_AMD=0)", "same => n,Set(OPENDEEP_AMD=1)")

    manager = shipped(MANAGER)
    username = settings.ami_username.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", username):
        raise ValueError(f"AMI_USERNAME {username!r}: use letters, digits, '.', '_' or '-'")
    manager = manager.replace("\n[opendeep]\n", f"\n[{username}]\n")
    if settings.ami_secret:
        if "\n" in settings.ami_secret or "\r" in settings.ami_secret:
            raise ValueError("AMI_SECRET cannot contain a line break")
        secret = settings.ami_secret.replace(";", "\\;")  # ';' starts a comment in Asterisk's .conf files
        manager = manager.replace("secret = CHANGE_ME", f"secret = {secret}")
    return {EXTENSIONS: extensions, MANAGER: manager}
