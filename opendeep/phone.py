"""Phone numbers: E.164 validation and the callee's time zone, via `phonenumbers`."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as phone_timezone

E164_HINT = "write it in E.164, e.g. +14155550123"


class InvalidPhoneNumber(ValueError):
    """Not a dialable number; the message says why, for a CSV line or a plan's target."""


def _hint(default_region: str | None) -> str:
    if default_region:
        return f"{E164_HINT}, or as a national number of {default_region}"
    return f"{E164_HINT} (or set your country on the Account page, or DEFAULT_REGION, to write national numbers)"


def normalize_e164(raw: str, default_region: str | None = None) -> str:
    """Return `raw` as E.164 (+14155550123) or raise InvalidPhoneNumber. With `default_region` (ISO 3166, e.g.
    "US"), a national number of that country is accepted too: "(415) 555-0123" -> +14155550123."""
    text = (raw or "").strip()
    if not text:
        raise InvalidPhoneNumber("phone number is empty")
    region = (default_region or "").upper() or None
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
            raise InvalidPhoneNumber(f"{text!r} has no valid country code: {_hint(region)}") from None
        raise InvalidPhoneNumber(f"{text!r} is not a phone number: {_hint(region)}") from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhoneNumber(f"{text!r} is not a valid phone number: {_hint(region)}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def callee_timezone(e164: str, fallback: str = "UTC") -> ZoneInfo:
    """The callee's zone from the number. Several zones (e.g. +1 area codes spanning two) -> the first;
    unknown -> `fallback`."""
    try:
        zones = phone_timezone.time_zones_for_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        zones = ()
    for name in zones:
        if name != "Etc/Unknown":
            try:
                return ZoneInfo(name)
            except (KeyError, ValueError):
                continue
    return ZoneInfo(fallback)
