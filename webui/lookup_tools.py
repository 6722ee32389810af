"""The assistant's lookup tools: authoritative business facts (Google Places API (New) Text Search) and internet
search (a pluggable provider; Gemini with Google Search grounding when GOOGLE_API_KEY is set).

Each tool returns a JSON-able dict. A failure (no key, HTTP error, timeout, odd answer) raises `ToolError` with
a sentence the model can act on; the assistant hands that to the model, never to the user as a traceback.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import httpx

from opendeep.settings import Settings

log = logging.getLogger(__name__)

PLACES_FIELD_MASK = ",".join((
    "places.id", "places.displayName", "places.formattedAddress", "places.internationalPhoneNumber",
    "places.nationalPhoneNumber", "places.regularOpeningHours.weekdayDescriptions", "places.timeZone",
    "places.websiteUri", "places.businessStatus",
))
GEMINI_MODEL = "gemini-2.5-flash"
HTTP_TIMEOUT_SECONDS = 15.0
MAX_PLACES = 5


class ToolError(RuntimeError):
    """A tool could not answer; the message is for the model (and says what to try instead)."""


class SearchProvider(Protocol):
    """Anything that answers a web search query with text and sources."""

    async def search(self, query: str) -> dict[str, Any]: ...


def _http_error(service: str, exc: httpx.HTTPError) -> ToolError:
    if isinstance(exc, httpx.HTTPStatusError):
        detail = exc.response.text[:300]
        try:
            detail = exc.response.json().get("error", {}).get("message", detail)
        except ValueError:
            pass
        return ToolError(f"{service} answered HTTP {exc.response.status_code}: {detail}")
    if isinstance(exc, httpx.TimeoutException):
        return ToolError(f"{service} did not answer within {HTTP_TIMEOUT_SECONDS:.0f} s; try again or ask the user")
    return ToolError(f"{service} is unreachable ({type(exc).__name__}: {exc})")


async def _post_json(shared: httpx.AsyncClient | None, service: str, url: str, body: dict[str, Any],
                     headers: dict[str, str]) -> dict[str, Any]:
    """POST `body`, return the JSON answered; every failure is a ToolError naming `service`."""
    try:
        async with _client(shared) as client:
            response = await client.post(url, json=body, headers=headers)
            response.raise_for_status()
            data = response.json()
    except httpx.HTTPError as exc:
        raise _http_error(service, exc) from None
    except ValueError:
        raise ToolError(f"{service} answered with something that is not JSON") from None
    return data


class PlacesLookup:
    """Google Places API (New) Text Search: name, phone, address, opening hours and time zone of businesses."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self._key = settings.google_api_key
        self._url = settings.google_places_base_url.rstrip("/") + "/v1/places:searchText"
        self._client = client

    async def lookup(self, query: str, location_hint: str = "") -> dict[str, Any]:
        if not self._key:
            raise ToolError("business lookup is not configured (GOOGLE_API_KEY is empty); ask the user for the "
                            "phone number instead")
        text_query = f"{query} {location_hint}".strip()
        if not text_query:
            raise ToolError("query is empty: give the business name and city")
        headers = {"X-Goog-Api-Key": self._key, "X-Goog-FieldMask": PLACES_FIELD_MASK}
        body = {"textQuery": text_query, "pageSize": MAX_PLACES}
        data = await _post_json(self._client, "Google Places", self._url, body, headers)
        places = [_place(raw) for raw in (data.get("places") or [])[:MAX_PLACES] if isinstance(raw, dict)]
        return {"query": text_query, "results": places,
                "note": "" if places else "no business found; ask the user for a more precise name or the number"}


def _place(raw: dict[str, Any]) -> dict[str, Any]:
    hours = (raw.get("regularOpeningHours") or {}).get("weekdayDescriptions") or []
    return {
        "name": (raw.get("displayName") or {}).get("text", ""),
        "phone_number": raw.get("internationalPhoneNumber") or raw.get("nationalPhoneNumber") or "",
        "address": raw.get("formattedAddress", ""),
        "opening_hours": hours,
        "time_zone": (raw.get("timeZone") or {}).get("id", ""),
        "website": raw.get("websiteUri", ""),
        "business_status": raw.get("businessStatus", ""),
    }


class GeminiSearch:
    """Internet search through Gemini with the Google Search grounding tool."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None,
                 model: str = GEMINI_MODEL) -> None:
        self._key = settings.google_api_key
        self._url = f"{settings.gemini_base_url.rstrip('/')}/v1beta/models/{model}:generateContent"
        self._client = client

    async def search(self, query: str) -> dict[str, Any]:
        body = {"contents": [{"role": "user", "parts": [{"text": query}]}], "tools": [{"google_search": {}}]}
        data = await _post_json(self._client, "Gemini search", self._url, body, {"x-goog-api-key": self._key})
        candidates = data.get("candidates") or []
        if not candidates:
            raise ToolError("Gemini search returned no answer; rephrase the query")
        candidate = candidates[0]
        text = "".join(part.get("text", "") for part in (candidate.get("content") or {}).get("parts", []))
        chunks = (candidate.get("groundingMetadata") or {}).get("groundingChunks") or []
        sources = [{"title": (c.get("web") or {}).get("title", ""), "url": (c.get("web") or {}).get("uri", "")}
                   for c in chunks if c.get("web")]
        return {"query": query, "answer": text, "sources": sources}


class _client:
    """Use the given client, or a short-lived one for this request."""

    def __init__(self, client: httpx.AsyncClient | None) -> None:
        self._given = client
        self._own: httpx.AsyncClient | None = None

    async def __aenter__(self) -> httpx.AsyncClient:
        if self._given is not None:
            return self._given
        self._own = httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS)
        return self._own

    async def __aexit__(self, *exc_info) -> None:
        if self._own is not None:
            await self._own.aclose()


def default_search_provider(settings: Settings) -> SearchProvider | None:
    """Gemini when GOOGLE_API_KEY is set; otherwise no internet search."""
    return GeminiSearch(settings) if settings.google_api_key else None
