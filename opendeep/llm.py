"""The one place that builds OpenAI clients (chat, analyzer, realtime) from settings."""

from __future__ import annotations

import openai

from opendeep.settings import Settings


class LlmNotConfigured(RuntimeError):
    """No LLM is configured; the message names the setting to set."""


def _check(settings: Settings) -> None:
    if not settings.llm_configured:
        raise LlmNotConfigured(
            "no LLM configured: set OPENAI_API_KEY (api.openai.com) or OPENAI_BASE_URL (any compatible server)"
        )


def chat_client(settings: Settings) -> openai.AsyncOpenAI:
    """Client for chat completions (assistant, analyzer, lifecycle, summarizer).

    No SDK retries: our callers own retry and backoff, so a timeout is seen once and handled deliberately.
    """
    _check(settings)
    return openai.AsyncOpenAI(
        api_key=settings.openai_api_key or "not-needed",
        base_url=settings.openai_base_url or None,
        timeout=settings.llm_timeout_seconds,
        max_retries=0,
    )


def realtime_client(settings: Settings) -> openai.AsyncOpenAI:
    """Client whose `.realtime.connect(model=...)` opens the call AI's WebSocket session."""
    _check(settings)
    return openai.AsyncOpenAI(
        api_key=settings.openai_api_key or "not-needed",
        base_url=settings.openai_base_url or None,
        max_retries=0,
    )
