"""A fake Google APIs HTTP server: Places API (New) Text Search and Gemini generateContent (Search grounding).

    fake = FakeGoogle(api_key="gkey")
    base_url = await fake.start()          # http://127.0.0.1:PORT (GOOGLE_PLACES_BASE_URL and GEMINI_BASE_URL)
    fake.add_place("Bright Smile Dental", "+1 510-555-0101", "12 Main St, Oakland, CA", "America/Los_Angeles")
    fake.fail_next(503)                    # the next request of either API answers 503
    ...                                    # fake.requests: (path, headers, JSON body) of every request
    await fake.stop()

Like the real service, it refuses a missing / wrong key (403) and a Places request without a field mask (400),
answers only the fields named in `X-Goog-FieldMask`, and matches places whose name contains any query word.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.doubles.local_http import LocalHttpServer


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeGoogle:
    api_key: str = "test-google-key"
    places: list[dict[str, Any]] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    search_answer: str = "No results."
    search_sources: list[tuple[str, str]] = field(default_factory=list)
    _failures: list[int] = field(default_factory=list)
    _http: LocalHttpServer | None = None
    base_url: str = ""

    def add_place(self, name: str, phone: str, address: str, time_zone: str,
                  hours: list[str] | None = None) -> None:
        self.places.append({
            "id": f"place-{len(self.places) + 1}",
            "displayName": {"text": name, "languageCode": "en"},
            "formattedAddress": address,
            "internationalPhoneNumber": phone,
            "nationalPhoneNumber": phone.split(" ", 1)[-1],
            "regularOpeningHours": {"openNow": True,
                                    "weekdayDescriptions": hours or ["Monday: 9:00 AM – 5:00 PM"]},
            "timeZone": {"id": time_zone},
            "websiteUri": f"https://example.test/{len(self.places) + 1}",
            "businessStatus": "OPERATIONAL",
        })

    def fail_next(self, status: int) -> None:
        self._failures.append(status)

    def _error(self, status: int, message: str, reason: str) -> JSONResponse:
        return JSONResponse({"error": {"code": status, "message": message, "status": reason}}, status_code=status)

    async def _checked(self, request: Request, key_header: str) -> tuple[dict[str, Any], JSONResponse | None]:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        self.requests.append(RecordedRequest(request.url.path, dict(request.headers), body))
        if self._failures:
            status = self._failures.pop(0)
            return body, self._error(status, "The service is currently unavailable.", "UNAVAILABLE")
        if request.headers.get(key_header) != self.api_key:
            return body, self._error(403, "API key not valid. Please pass a valid API key.", "PERMISSION_DENIED")
        return body, None

    async def _search_text(self, request: Request) -> JSONResponse:
        body, error = await self._checked(request, "x-goog-api-key")
        if error:
            return error
        mask = request.headers.get("x-goog-fieldmask", "")
        if not mask:
            return self._error(400, "FieldMask is a required parameter.", "INVALID_ARGUMENT")
        if not body.get("textQuery"):
            return self._error(400, "textQuery is required.", "INVALID_ARGUMENT")
        words = {word.lower() for word in body["textQuery"].split()}
        matches = [p for p in self.places if words & {w.lower() for w in p["displayName"]["text"].split()}]
        matches = matches[: int(body.get("pageSize", 20))]
        fields = [f.removeprefix("places.") for f in mask.split(",")]
        if "*" in mask:
            return JSONResponse({"places": matches} if matches else {})
        trimmed = []
        for place in matches:
            out: dict[str, Any] = {}
            for name in fields:
                top, _, sub = name.partition(".")
                if top in place:
                    if sub and isinstance(place[top], dict):
                        out.setdefault(top, {})[sub] = place[top].get(sub)
                    else:
                        out[top] = place[top]
            trimmed.append(out)
        return JSONResponse({"places": trimmed} if trimmed else {})   # Google omits "places" when none match

    async def _generate(self, request: Request) -> JSONResponse:
        body, error = await self._checked(request, "x-goog-api-key")
        if error:
            return error
        if {"google_search": {}} not in (body.get("tools") or []):
            return self._error(400, "expected the google_search tool", "INVALID_ARGUMENT")
        return JSONResponse({
            "candidates": [{
                "content": {"role": "model", "parts": [{"text": self.search_answer}]},
                "finishReason": "STOP",
                "groundingMetadata": {"groundingChunks": [{"web": {"uri": uri, "title": title}}
                                                          for title, uri in self.search_sources]},
            }],
            "modelVersion": request.path_params["model"],
        })

    async def start(self) -> str:
        app = Starlette(routes=[
            Route("/v1/places:searchText", self._search_text, methods=["POST"]),
            Route("/v1beta/models/{model}:generateContent", self._generate, methods=["POST"]),
        ])
        self._http = LocalHttpServer(app)
        port = await self._http.start()
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()
            self._http = None
