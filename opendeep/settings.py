"""Every setting OpenDeep reads, from the environment and an optional `.env` file.

One table (`SETTINGS`) names each setting, its default and its parser; README.md and .env.example list the
same names (a test keeps them in step). An invalid value raises `SettingsError` naming the setting; the CLI
turns it into one line on stderr and exit code 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from opendeep.asterisk_servers import AsteriskServer, build_servers, parse_server_list
from opendeep.prices import PriceTable, parse_model_prices


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the setting."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class CallingWindow:
    """Local hours in which a callee may be rung, e.g. 09:00-20:00 in the callee's time zone."""

    start: time
    end: time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true/false")


def parse_host_port(raw: str) -> HostPort:
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535")
    return HostPort(host.strip("[]"), int(port))


def parse_window(raw: str) -> CallingWindow:
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", raw)
    if not match:
        raise ValueError("expected HH:MM-HH:MM")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    try:
        start, end = time(h1, m1), time(h2, m2)
    except ValueError as exc:
        raise ValueError("expected HH:MM-HH:MM with real hours and minutes") from exc
    if start == end:
        raise ValueError("window start and end must differ")
    return CallingWindow(start, end)


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        networks = tuple(ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"expected comma-separated addresses or CIDR networks ({exc})") from None
    if not networks:
        raise ValueError("list at least one address (Asterisk's)")
    return networks


def peer_allowed(settings: Settings, host: str | None) -> bool:
    """Whether a connection from `host` may speak FastAGI / AudioSocket (ASTERISK_ALLOWED_PEERS)."""
    try:
        address = ipaddress.ip_address((host or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in settings.asterisk_allowed_peers)


def _number(raw: str, kind: type, expected: str) -> Any:
    """`kind(raw)`, or a ValueError saying what is `expected` (int() would say "invalid literal for int()")."""
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ValueError(expected) from None
    if value != value or value in (float("inf"), float("-inf")):   # nan, inf
        raise ValueError(expected)
    return value


def _frames_per_append(raw: str) -> int:
    value = int(raw)
    if value not in (1, 2):
        raise ValueError("expected 1 or 2 (a frame waits at most 20 ms for its partner)")
    return value
def _positive_int(raw: str) -> int:
    expected = "expected a whole number of at least 1, e.g. 4"
    if _number(raw, int, expected) < 1:
        raise ValueError(expected)
    return int(raw)


def _non_negative_float(raw: str) -> float:
    expected = "expected a number of at least 0, e.g. 2 or 0.5"
    value = _number(raw, float, expected)
    if value < 0:
        raise ValueError(expected)
    return value


def _fraction(raw: str) -> float:
    expected = "expected a number from 0 to 1, e.g. 0.2"
    value = _number(raw, float, expected)
    if not 0 <= value <= 1:
        raise ValueError(expected)
    return value


def _positive_float(raw: str) -> float:
    expected = "expected a number above 0, e.g. 10"
    value = _number(raw, float, expected)
    if not value > 0:
        raise ValueError(expected)
    return value


def parse_region(raw: str) -> str:
    """An ISO 3166 country code phonenumbers knows (US, GB, DE...), or empty (numbers must then be E.164)."""
    import phonenumbers

    value = raw.strip().upper()
    if value and value not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError("expected a two-letter country code such as US, GB or DE, or nothing (E.164 only)")
    return value


def _database_url(raw: str) -> str:
    # The messages never quote the URL: it may carry the database password.
    if not raw.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ValueError("expected sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST[:PORT]/DB")
    try:
        port = urlsplit(raw).port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("the port after HOST: must be a number from 1 to 65535")
    return raw


def _url_passwords(url: str) -> set[str]:
    """The password in scheme://user:password@host/..., as written and percent-decoded. It is taken up to the
    last '@': an unencoded '@' in a password (or one in the query) then hides too much, never too little."""
    _, scheme_sep, rest = url.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    _, colon, password = userinfo.partition(":")
    return {password, unquote(password)} - {""} if scheme_sep and at and colon else set()


def hide_url_password(text: str, url: str) -> str:
    """`text` with the password of `url` replaced by ***, wherever it appears: for every message that may quote
    the URL (DATABASE_URL) or a driver's error about it."""
    for password in sorted(_url_passwords(url), key=len, reverse=True):
        text = text.replace(password, "***")
    return text


def _e164_or_empty(raw: str) -> str:
    if raw and not re.fullmatch(r"\+[1-9]\d{6,14}", raw):
        raise ValueError("expected an E.164 number such as +14155550123")
    return raw


def _proxy_networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"expected comma-separated addresses or CIDR networks ({exc})") from None


def _base_url_or_empty(raw: str) -> str:
    raw = raw.strip().rstrip("/")
    if raw and (urlsplit(raw).scheme not in ("http", "https") or not urlsplit(raw).netloc):
        raise ValueError("expected http(s)://HOST[:PORT][/PATH] or nothing")
    return raw


def _event_loop(raw: str) -> str:
    value = raw.strip().lower() or "asyncio"
    if value not in {"asyncio", "uvloop"}:
        raise ValueError("expected asyncio or uvloop")
    return value


def _log_level(raw: str) -> str:
    value = raw.upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return value


@dataclass(frozen=True)
class Setting:
    env: str
    attr: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", "database_url", "sqlite+aiosqlite:///./opendeep.db", _database_url,
            "SQLAlchemy URL: SQLite (embedded) or PostgreSQL via asyncpg (production)"),
    Setting("SECRET_KEY", "secret_key", "", str,
            "signs session cookies; empty = a random key per start (everyone is logged out on restart)",
            secret=True),
    Setting("ALLOW_SIGNUP", "allow_signup", "false", parse_bool, "let visitors create their own account"),
    Setting("AMI_HOST", "ami_host", "127.0.0.1", str, "Asterisk Manager Interface host"),
    Setting("AMI_PORT", "ami_port", "5038", _positive_int, "AMI port"),
    Setting("AMI_USERNAME", "ami_username", "opendeep", str, "AMI user (see dialplan/manager_opendeep.conf)"),
    Setting("AMI_SECRET", "ami_secret", "", str, "AMI secret", secret=True),
    Setting("ASTERISK_SERVERS", "asterisk_server_entries", "", parse_server_list,
            "several Asterisk servers as a JSON list (name, ami, ami_username, ami_secret, audiosocket, fastagi, "
            "max_calls); empty = one server from AMI_* (see opendeep/asterisk_servers.py)", secret=True),
    Setting("AMI_RECONNECT_MAX_SECONDS", "ami_reconnect_max_seconds", "30", _non_negative_float,
            "longest wait between AMI reconnect attempts (backoff doubles from 1 s)"),
    Setting("FASTAGI_BIND", "fastagi_bind", "127.0.0.1:4573", parse_host_port, "FastAGI server listen address"),
    Setting("FASTAGI_ADVERTISE", "fastagi_advertise", "", str,
            "HOST:PORT Asterisk uses to reach FastAGI (dialplan render); empty = FASTAGI_BIND"),
    Setting("FASTAGI_SECRET", "fastagi_secret", "", str,
            "shared secret in every AGI URL of the rendered dialplan; empty = one kept in ./fastagi.secret",
            secret=True),
    Setting("ASTERISK_ALLOWED_PEERS", "asterisk_allowed_peers", "127.0.0.1/32,::1/128", _networks,
            "addresses (CIDR, comma-separated) allowed to connect to the FastAGI and AudioSocket ports"),
    Setting("AUDIOSOCKET_BIND", "audiosocket_bind", "127.0.0.1:9092", parse_host_port,
            "AudioSocket server listen address"),
    Setting("AUDIOSOCKET_ADVERTISE", "audiosocket_advertise", "", str,
            "HOST:PORT Asterisk's AudioSocket channel connects to; empty = AUDIOSOCKET_BIND"),
    Setting("AUDIOSOCKET_REUSE_PORT", "audiosocket_reuse_port", "false", parse_bool,
            "let several processes listen on AUDIOSOCKET_BIND (SO_REUSEPORT): the kernel spreads the calls"),
    Setting("AUDIOSOCKET_FRAMES_PER_APPEND", "audiosocket_frames_per_append", "1", _frames_per_append,
            "20 ms frames of the callee per message to the model: 2 halves the messages, adds 10 ms on average"),
    Setting("EVENT_LOOP", "event_loop", "asyncio", _event_loop,
            "asyncio, or uvloop (pip install 'opendeep[uvloop]'): less CPU per FastAGI session and shorter "
            "call-start latency (bench/bench_fastagi.py --loop)"),
    Setting("WEB_BIND", "web_bind", "127.0.0.1:8000", parse_host_port, "web UI listen address"),
    Setting("OPENAI_API_KEY", "openai_api_key", "", str, "key for the OpenAI-compatible API", secret=True),
    Setting("OPENAI_BASE_URL", "openai_base_url", "", str,
            "base URL of an OpenAI-compatible API; empty = api.openai.com"),
    Setting("OPENAI_CHAT_MODEL", "openai_chat_model", "gpt-4.1-mini", str, "model of the web UI assistant"),
    Setting("OPENAI_ANALYZER_MODEL", "openai_analyzer_model", "gpt-4.1-mini", str,
            "model of the post-call analyzer, lifecycle manager and summarizer"),
    Setting("OPENAI_REALTIME_MODEL", "openai_realtime_model", "gpt-realtime", str, "realtime voice model"),
    Setting("OPENAI_REALTIME_VOICE", "openai_realtime_voice", "marin", str, "voice of the call AI"),
    Setting("OPENAI_TRANSCRIBE_MODEL", "openai_transcribe_model", "gpt-4o-mini-transcribe", str,
            "model that transcribes the callee's side of a call"),
    Setting("LLM_TIMEOUT_SECONDS", "llm_timeout_seconds", "30", _non_negative_float,
            "timeout of one chat/analyzer LLM request"),
    Setting("GOOGLE_API_KEY", "google_api_key", "", str,
            "Google Places (business lookup) and Gemini (internet search)", secret=True),
    Setting("GOOGLE_PLACES_BASE_URL", "google_places_base_url", "https://places.googleapis.com", str,
            "Places API (New) endpoint (tests point it at a fake)"),
    Setting("GEMINI_BASE_URL", "gemini_base_url", "https://generativelanguage.googleapis.com", str,
            "Gemini API endpoint used by search_internet"),
    Setting("MAX_CONCURRENT_CALLS", "max_concurrent_calls", "4", _positive_int, "calls in progress at once"),
    Setting("MAX_CONCURRENT_CALLS_PER_USER", "max_concurrent_calls_per_user", "2", _positive_int,
            "calls in progress at once for one tenant"),
    Setting("APP_TEST_MODE", "app_test_mode", "false", parse_bool,
            "dial only APP_TEST_MODE_REDIRECT_NUMBER, one call at a time"),
    Setting("APP_TEST_MODE_REDIRECT_NUMBER", "app_test_mode_redirect_number", "", _e164_or_empty,
            "the one number dialled in test mode (E.164)"),
    Setting("SCHEDULER_POLL_SECONDS", "scheduler_poll_seconds", "2", _non_negative_float,
            "how often the scheduler looks for due tasks"),
    Setting("DEFAULT_CALLING_WINDOW", "default_calling_window", "09:00-20:00", parse_window,
            "callee-local hours for calls unless the campaign overrides them"),
    Setting("RETRY_BACKOFF_BASE_SECONDS", "retry_backoff_base_seconds", "300", _non_negative_float,
            "first retry delay after busy / no answer / failed; doubles per attempt"),
    Setting("RETRY_BACKOFF_MAX_SECONDS", "retry_backoff_max_seconds", "14400", _non_negative_float,
            "longest retry delay"),
    Setting("RETRY_JITTER", "retry_jitter", "0.2", _fraction, "random +/- share added to each retry delay"),
    Setting("GLOBAL_DND_TENANT_THRESHOLD", "global_dnd_tenant_threshold", "3", _positive_int,
            "a number listed by this many tenants is not called by anyone"),
    Setting("DIAL_STRING_TEMPLATE", "dial_string_template", "PJSIP/{number}@opendeep-trunk", str,
            "what Dial() rings; {number} is the E.164 number, {digits} the same without '+'"),
    Setting("CALLER_ID", "caller_id", "", str, "caller ID presented on outbound calls, e.g. \"Acme\" <+15551234>"),
    Setting("ORIGINATE_TIMEOUT_SECONDS", "originate_timeout_seconds", "45", _positive_int,
            "how long the callee's phone rings"),
    Setting("MAX_CALL_SECONDS", "max_call_seconds", "600", _positive_int, "hard limit of one call"),
    Setting("SILENCE_TIMEOUT_SECONDS", "silence_timeout_seconds", "30", _positive_int,
            "hang up after this long with nobody speaking"),
    Setting("HITL_TIMEOUT_SECONDS", "hitl_timeout_seconds", "90", _positive_int,
            "how long the call AI waits for the user's answer to a question"),
    Setting("REALTIME_VAD_THRESHOLD", "realtime_vad_threshold", "0.6", _fraction,
            "server VAD threshold (higher = less false barge-in from echo)"),
    Setting("REALTIME_VAD_SILENCE_MS", "realtime_vad_silence_ms", "500", _positive_int,
            "silence that ends the callee's turn"),
    Setting("REALTIME_VAD_PREFIX_MS", "realtime_vad_prefix_ms", "300", _positive_int,
            "audio kept before detected speech"),
    Setting("LIFECYCLE_INTERVAL_SECONDS", "lifecycle_interval_seconds", "60", _non_negative_float,
            "how often the lifecycle manager checks for stuck and long-running tasks"),
    Setting("STUCK_TASK_SECONDS", "stuck_task_seconds", "900", _positive_int,
            "a queued / in-progress task with no live call for this long is recovered"),
    Setting("RECORD_CALLS", "record_calls", "true", parse_bool,
            "record each call the AI takes (both directions; the AI says so at the start)"),
    Setting("RECORDINGS_DIR", "recordings_dir", "recordings", str,
            "where Asterisk writes the recordings and the web UI reads them (the same path on both)"),
    Setting("RECORDING_RETENTION_DAYS", "recording_retention_days", "30", _positive_int,
            "recordings older than this are deleted"),
    Setting("CALLBACK_WINDOW_DAYS", "callback_window_days", "7", _positive_int,
            "a caller who rings back within this many days of our last call to their number reaches that task"),
    Setting("CALLBACK_NUMBER", "callback_number", "", _e164_or_empty,
            "the number callees ring back (E.164), spoken in voicemail messages; empty = the number in CALLER_ID"),
    Setting("LOG_LEVEL", "log_level", "INFO", _log_level, "DEBUG, INFO, WARNING or ERROR"),
    Setting("WEB_HEADER_TIMEOUT_SECONDS", "web_header_timeout_seconds", "10", _positive_float,
            "a web client must send a whole request head this soon after connecting (or after the last answer)"),
    Setting("WEB_BODY_TIMEOUT_SECONDS", "web_body_timeout_seconds", "60", _positive_float,
            "a web client must send a whole request body this soon after its head (5 MiB in 60 s is 0.7 Mbit/s)"),
    Setting("WEB_MAX_CONNECTIONS", "web_max_connections", "500", _positive_int,
            "open web connections at most; at the limit a new one replaces the longest-waiting one that has "
            "not sent a request yet"),
    Setting("TRUSTED_PROXIES", "trusted_proxies", "", _proxy_networks,
            "addresses (CIDR, comma-separated) of reverse proxies whose X-Forwarded-For names the web client; "
            "empty = none"),
    Setting("DEFAULT_REGION", "default_region", "", parse_region,
            "country (US, GB, DE...) whose national formats CSV, DND and plans accept, e.g. 4155550123 for "
            "+14155550123; each user can set their own on the account page; empty = E.164 only"),
    Setting("SESSION_COOKIE_SECURE", "session_cookie_secure", "false", parse_bool,
            "send the session cookie over HTTPS only: set true when the web UI is behind TLS"),
    # Webhooks and /metrics (opendeep/webhooks.py, webui/metrics_endpoint.py).
    Setting("PUBLIC_BASE_URL", "public_base_url", "", _base_url_or_empty,
            "the web UI's address as others reach it (https://opendeep.example.com), for links in webhooks; "
            "empty = links are paths such as /calls/12"),
    Setting("WEBHOOK_ALLOW_PRIVATE", "webhook_allow_private", "false", parse_bool,
            "let webhook URLs reach loopback, private, link-local and reserved addresses (off: refused, SSRF)"),
    Setting("WEBHOOK_TIMEOUT_SECONDS", "webhook_timeout_seconds", "10", _positive_float,
            "one webhook delivery's whole request (connect, send, answer) must finish this soon"),
    Setting("WEBHOOK_RETRY_HOURS", "webhook_retry_hours", "24", _positive_float,
            "a webhook delivery is retried with exponential backoff for this long, then given up"),
    Setting("WEBHOOK_CONCURRENCY_PER_ENDPOINT", "webhook_concurrency_per_endpoint", "4", _positive_int,
            "deliveries in flight at once to one endpoint (a slow endpoint holds only these)"),
    Setting("WEBHOOK_MAX_CONCURRENCY", "webhook_max_concurrency", "64", _positive_int,
            "webhook deliveries in flight at once in one process"),
    Setting("METRICS_ENABLED", "metrics_enabled", "false", parse_bool,
            "serve Prometheus metrics at /metrics on the web port, without login (states and counts only)"),
    Setting("MODEL_PRICES", "model_prices", "", parse_model_prices,
            "JSON {model: {text_in, text_cached_in, text_out, audio_in, audio_cached_in, audio_out, per_minute}} in "
            "USD per 1M tokens (per_minute: USD per audio minute); empty = the documented list prices"),
    Setting("TRUNK_PRICE_PER_MINUTE", "trunk_price_per_minute", "0", _non_negative_float,
            "USD per answered minute on your trunk; 0 = trunk minutes are counted but cost nothing"),
    Setting("TRUNK_BILLING_INCREMENT_SECONDS", "trunk_billing_increment_seconds", "1", _positive_int,
            "your carrier bills answered time in whole increments of this many seconds (60 for per-minute billing)"),
)


@dataclass(frozen=True)
class Settings:
    database_url: str
    secret_key: str
    allow_signup: bool
    ami_host: str
    ami_port: int
    ami_username: str
    ami_secret: str
    asterisk_server_entries: tuple
    ami_reconnect_max_seconds: float
    fastagi_bind: HostPort
    fastagi_advertise: str
    fastagi_secret: str
    asterisk_allowed_peers: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    audiosocket_bind: HostPort
    audiosocket_advertise: str
    audiosocket_reuse_port: bool
    audiosocket_frames_per_append: int
    event_loop: str
    web_bind: HostPort
    openai_api_key: str
    openai_base_url: str
    openai_chat_model: str
    openai_analyzer_model: str
    openai_realtime_model: str
    openai_realtime_voice: str
    openai_transcribe_model: str
    llm_timeout_seconds: float
    google_api_key: str
    google_places_base_url: str
    gemini_base_url: str
    max_concurrent_calls: int
    max_concurrent_calls_per_user: int
    app_test_mode: bool
    app_test_mode_redirect_number: str
    scheduler_poll_seconds: float
    default_calling_window: CallingWindow
    retry_backoff_base_seconds: float
    retry_backoff_max_seconds: float
    retry_jitter: float
    global_dnd_tenant_threshold: int
    dial_string_template: str
    caller_id: str
    originate_timeout_seconds: int
    max_call_seconds: int
    silence_timeout_seconds: int
    hitl_timeout_seconds: int
    realtime_vad_threshold: float
    realtime_vad_silence_ms: int
    realtime_vad_prefix_ms: int
    lifecycle_interval_seconds: float
    stuck_task_seconds: int
    record_calls: bool
    recordings_dir: str
    recording_retention_days: int
    callback_window_days: int
    callback_number: str
    log_level: str
    web_header_timeout_seconds: float
    web_body_timeout_seconds: float
    web_max_connections: int
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    session_cookie_secure: bool
    public_base_url: str
    webhook_allow_private: bool
    webhook_timeout_seconds: float
    webhook_retry_hours: float
    webhook_concurrency_per_endpoint: int
    webhook_max_concurrency: int
    metrics_enabled: bool
    model_prices: PriceTable
    trunk_price_per_minute: float
    trunk_billing_increment_seconds: int
    default_region: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def effective_max_concurrent_calls(self) -> int:
        """Test mode forces one call at a time."""
        return 1 if self.app_test_mode else self.max_concurrent_calls

    @property
    def fastagi_address(self) -> str:
        return self.fastagi_advertise or str(self.fastagi_bind)

    @property
    def audiosocket_address(self) -> str:
        return self.audiosocket_advertise or str(self.audiosocket_bind)

    @property
    def asterisk_servers(self) -> tuple[AsteriskServer, ...]:
        """Every Asterisk server calls go through (ASTERISK_SERVERS, else one from the AMI_* settings)."""
        return build_servers(self.asterisk_server_entries, ami_host=self.ami_host, ami_port=self.ami_port,
                             ami_username=self.ami_username, ami_secret=self.ami_secret,
                             audiosocket_address=self.audiosocket_address, fastagi_address=self.fastagi_address,
                             max_calls=self.max_concurrent_calls)

    def asterisk_server(self, name: str | None) -> AsteriskServer | None:
        """The server called `name`; a call recorded before servers had names (None) is on the first one."""
        servers = self.asterisk_servers
        if name is None:
            return servers[0]
        return next((server for server in servers if server.name == name), None)

    @property
    def callback_number_e164(self) -> str:
        """The number callees ring back: CALLBACK_NUMBER, else the +digits in CALLER_ID, else ""."""
        if self.callback_number:
            return self.callback_number
        match = re.search(r"\+[1-9]\d{6,14}", self.caller_id)
        return match.group(0) if match else ""

    @property
    def llm_configured(self) -> bool:
        return bool(self.openai_api_key or self.openai_base_url)


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines (optionally quoted, # comments); a missing file is empty."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_settings(environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")) -> Settings:
    """Build Settings: the environment wins over `.env`, which wins over the defaults."""
    source: dict[str, str] = read_dotenv(dotenv) if dotenv else {}
    source.update(os.environ if environ is None else environ)
    if source.get("APP_TEST_MODE") and parse_bool_safe(source["APP_TEST_MODE"]):
        if not source.get("APP_TEST_MODE_REDIRECT_NUMBER"):
            raise SettingsError("APP_TEST_MODE_REDIRECT_NUMBER: required when APP_TEST_MODE is on")
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = source.get(setting.env, setting.default)
        try:
            values[setting.attr] = setting.parse(raw)
        except ValueError as exc:
            shown = "***" if setting.secret else repr(hide_url_password(raw, raw))
            raise SettingsError(f"{setting.env}={shown}: {hide_url_password(str(exc), raw)}") from None
    return Settings(**values)


def parse_bool_safe(raw: str) -> bool:
    try:
        return parse_bool(raw)
    except ValueError:
        return False
