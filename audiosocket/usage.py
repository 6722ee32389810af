"""What a call's Realtime session used, from the session's own usage events, priced and handed to the recorder.

Two server events carry usage (the GA shapes of the `openai` SDK's types):
- `response.done`: `response.usage` with input_tokens / output_tokens and input_token_details (text_tokens,
  audio_tokens, cached_tokens, cached_tokens_details {text_tokens, audio_tokens}) and output_token_details
  (text_tokens, audio_tokens): one Response of the call AI. Cached tokens are part of the input counts there.
- `conversation.item.input_audio_transcription.completed`: `usage` of the transcription model, either
  `{"type": "tokens", input_tokens, output_tokens, input_token_details {text_tokens, audio_tokens}}` or
  `{"type": "duration", "seconds"}`.

Each is priced when it arrives (MODEL_PRICES) and queued on the call's recorder, which writes it off the audio
path with the call's other records; the campaign's spend and budget are updated in that write (db/costs.py).
The bridge calls `observe_usage` for every non-audio server event; anything else returns at the first test.
"""

from __future__ import annotations

from typing import Any

from audiosocket.recorder import CallRecorder
from db.costs import UsageEntry
from db.models import UsageKind
from opendeep.costs import warn_unpriced_once
from opendeep.prices import TokenUsage, price_usage
from opendeep.settings import Settings

RESPONSE_DONE = "response.done"
TRANSCRIPTION_DONE = "conversation.item.input_audio_transcription.completed"


def _count(data: Any, key: str) -> int:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def realtime_usage(usage: Any) -> TokenUsage:
    """A Response's `usage` -> tokens, cached input apart. Missing or malformed fields count as 0 (never raise:
    the model's server is outside our control)."""
    if not isinstance(usage, dict):
        return TokenUsage()
    details_in = usage.get("input_token_details") or {}
    details_out = usage.get("output_token_details") or {}
    cached = details_in.get("cached_tokens_details") or {} if isinstance(details_in, dict) else {}
    text_in, audio_in = _count(details_in, "text_tokens"), _count(details_in, "audio_tokens")
    if not (text_in or audio_in):   # no breakdown: all input as text
        text_in = _count(usage, "input_tokens")
    cached_text, cached_audio = min(_count(cached, "text_tokens"), text_in), min(_count(cached, "audio_tokens"),
                                                                                  audio_in)
    text_out, audio_out = _count(details_out, "text_tokens"), _count(details_out, "audio_tokens")
    if not (text_out or audio_out):
        audio_out = _count(usage, "output_tokens")   # the call AI answers in audio
    return TokenUsage(text_in=text_in - cached_text, text_cached_in=cached_text, text_out=text_out,
                      audio_in=audio_in - cached_audio, audio_cached_in=cached_audio, audio_out=audio_out)


def transcription_usage(usage: Any) -> TokenUsage:
    """A transcription's `usage` (tokens or duration) -> TokenUsage."""
    if not isinstance(usage, dict):
        return TokenUsage()
    if usage.get("type") == "duration":
        seconds = usage.get("seconds")
        return TokenUsage(seconds=float(seconds)) if isinstance(seconds, int | float) and seconds > 0 else TokenUsage()
    details = usage.get("input_token_details") or {}
    text_in, audio_in = _count(details, "text_tokens"), _count(details, "audio_tokens")
    if not (text_in or audio_in):
        audio_in = _count(usage, "input_tokens")
    return TokenUsage(text_in=text_in, audio_in=audio_in, text_out=_count(usage, "output_tokens"))


def observe_usage(recorder: CallRecorder, settings: Settings, model: str, event: dict[str, Any]) -> None:
    """Record the usage a server event reports, if it reports any (see the module docstring)."""
    type_ = event.get("type")
    if type_ == RESPONSE_DONE:
        response = event.get("response")
        usage = realtime_usage(response.get("usage") if isinstance(response, dict) else None)
        kind = UsageKind.CALL_AI
    elif type_ == TRANSCRIPTION_DONE:
        usage = transcription_usage(event.get("usage"))
        kind, model = UsageKind.TRANSCRIPTION, settings.openai_transcribe_model
    else:
        return
    if usage.empty:
        return
    priced = price_usage(settings.model_prices, model, usage)
    if priced.cost_microusd is None:
        warn_unpriced_once(kind, model, priced.unpriced_reason)
    recorder.usage(UsageEntry(kind, model, usage, priced))
