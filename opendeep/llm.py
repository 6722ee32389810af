"""The one place that builds OpenAI clients (chat, analyzer, realtime) from settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionUserMessageParam,
)
from openai.types.shared_params import ResponseFormatJSONSchema

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


class LlmRequestError(RuntimeError):
    """A chat request gave no usable answer; the message says why (timeout, HTTP status, connection, refusal)."""


def _chat_messages(messages: list[dict[str, str]]) -> list[ChatCompletionMessageParam]:
    """Our {"role", "content"} pairs as the SDK's typed message params (system, user or assistant text)."""
    typed: list[ChatCompletionMessageParam] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system":
            typed.append(ChatCompletionSystemMessageParam(role="system", content=content))
        elif role == "user":
            typed.append(ChatCompletionUserMessageParam(role="user", content=content))
        elif role == "assistant":
            typed.append(ChatCompletionAssistantMessageParam(role="assistant", content=content))
        else:
            raise ValueError(f"chat message role must be system, user or assistant, not {role!r}")
    return typed


async def structured_completion(client: openai.AsyncOpenAI, model: str, messages: list[dict[str, str]], *,
                                name: str, schema: dict[str, Any],
                                on_usage: Callable[[Any], None] | None = None) -> str:
    """One chat completion with strict JSON-schema output; returns the answer's text (the caller parses and
    validates it). Every failure to get an answer is LlmRequestError. `on_usage` receives the response's
    `usage` (an openai CompletionUsage, or None) as soon as a response arrives, whether or not it is usable:
    it was paid for either way."""
    try:
        response = await client.chat.completions.create(
            model=model, messages=_chat_messages(messages), temperature=0,
            response_format=ResponseFormatJSONSchema(
                type="json_schema", json_schema={"name": name, "strict": True, "schema": schema}),
        )
    except openai.APITimeoutError:
        raise LlmRequestError(f"model {model!r} did not answer in time (LLM_TIMEOUT_SECONDS)") from None
    except openai.APIStatusError as exc:
        raise LlmRequestError(f"model {model!r} answered HTTP {exc.status_code}: {exc.message}") from None
    except openai.APIConnectionError as exc:
        raise LlmRequestError(f"cannot reach model {model!r} (OPENAI_BASE_URL): {exc}") from None
    except openai.APIError as exc:  # e.g. a response the SDK cannot parse
        raise LlmRequestError(f"model {model!r} gave an unusable response: {exc}") from None
    if on_usage is not None:
        on_usage(response.usage)
    if not response.choices:
        raise LlmRequestError(f"model {model!r} returned no choices")
    message = response.choices[0].message
    if getattr(message, "refusal", None):
        raise LlmRequestError(f"model {model!r} refused: {message.refusal}")
    return message.content or ""
