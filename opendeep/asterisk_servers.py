"""The Asterisk servers OpenDeep places calls through (ASTERISK_SERVERS), each with its own AMI login, the
AudioSocket and FastAGI addresses its dialplan uses, and its own call limit.

Unset, there is one server, named `default`, made of the single-server settings (AMI_HOST, AMI_PORT, AMI_USERNAME,
AMI_SECRET, AUDIOSOCKET_ADVERTISE/BIND, FASTAGI_ADVERTISE/BIND, MAX_CONCURRENT_CALLS): what OpenDeep did before.
Set, it is a JSON list; a field left out takes the single-server setting's value:

    ASTERISK_SERVERS='[{"name": "pbx-a", "ami": "10.0.0.11:5038", "ami_secret": "...", "max_calls": 40,
                        "audiosocket": "10.0.0.5:9092", "fastagi": "10.0.0.5:4573"},
                       {"name": "pbx-b", "ami": "10.0.0.12:5038", "ami_secret": "...", "max_calls": 40}]'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_SERVER = "default"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_FIELDS = {"name", "ami", "ami_username", "ami_secret", "audiosocket", "fastagi", "max_calls"}


@dataclass(frozen=True)
class AsteriskServer:
    """One Asterisk: where its AMI is, how we log in, what its dialplan connects to, how many calls it carries."""

    name: str
    ami_host: str
    ami_port: int
    ami_username: str
    ami_secret: str
    audiosocket_address: str
    fastagi_address: str
    max_calls: int

    @property
    def ami_address(self) -> str:
        return f"{self.ami_host}:{self.ami_port}"


def parse_server_list(raw: str) -> tuple[tuple[tuple[str, Any], ...], ...]:
    """Validate ASTERISK_SERVERS (JSON); the entries are completed with the single-server settings later
    (Settings.asterisk_servers). Empty: ()."""
    if not raw.strip():
        return ()
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected a JSON list of servers ({exc.msg} at character {exc.pos})") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError('expected a non-empty JSON list such as [{"name": "pbx-a", "ami": "10.0.0.11:5038"}]')
    names: set[str] = set()
    parsed = []
    for index, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise ValueError(f"server {index}: expected an object with name, ami, ...")
        unknown = set(entry) - _FIELDS
        if unknown:
            raise ValueError(f"server {index}: unknown field(s) {', '.join(sorted(unknown))}; known: "
                             f"{', '.join(sorted(_FIELDS))}")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"server {index}: name must be 1-32 letters, digits, '.', '_' or '-'")
        if name in names:
            raise ValueError(f"server {index}: the name {name!r} is used twice")
        names.add(name)
        for key in ("ami", "audiosocket", "fastagi"):
            if key in entry:
                _host_port(entry[key], f"server {name!r}: {key}")
            elif key == "ami":
                raise ValueError(f"server {name!r}: ami (HOST:PORT of its Asterisk Manager Interface) is required")
        for key in ("ami_username", "ami_secret"):
            if key in entry and not isinstance(entry[key], str):
                raise ValueError(f"server {name!r}: {key} must be a string")
        if "max_calls" in entry and (not isinstance(entry["max_calls"], int) or isinstance(entry["max_calls"], bool)
                                     or entry["max_calls"] < 1):
            raise ValueError(f"server {name!r}: max_calls must be a whole number >= 1")
        parsed.append(tuple(sorted(entry.items())))
    return tuple(parsed)


def _host_port(raw: Any, what: str) -> tuple[str, int]:
    host, sep, port = str(raw).strip().rpartition(":")
    if not isinstance(raw, str) or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}: expected HOST:PORT with a port from 1 to 65535")
    return host.strip("[]"), int(port)


def build_servers(entries, *, ami_host: str, ami_port: int, ami_username: str, ami_secret: str,
                  audiosocket_address: str, fastagi_address: str, max_calls: int) -> tuple[AsteriskServer, ...]:
    """The configured servers, completed with the single-server settings (or the one `default` server)."""
    if not entries:
        return (AsteriskServer(DEFAULT_SERVER, ami_host, ami_port, ami_username, ami_secret, audiosocket_address,
                               fastagi_address, max_calls),)
    servers = []
    for pairs in entries:
        entry = dict(pairs)
        host, port = _host_port(entry["ami"], "ami")
        servers.append(AsteriskServer(
            name=entry["name"], ami_host=host, ami_port=port,
            ami_username=entry.get("ami_username", ami_username), ami_secret=entry.get("ami_secret", ami_secret),
            audiosocket_address=entry.get("audiosocket", audiosocket_address),
            fastagi_address=entry.get("fastagi", fastagi_address), max_calls=entry.get("max_calls", max_calls)))
    return tuple(servers)
