"""Recording what the chat-completions models (analyzer, summarizer, web assistant) used, and the calls' trunk
minutes: usage -> TokenUsage -> priced by the settings -> db/costs.record_usage, attributed to whom it served.

The call AI's own Realtime usage is recorded on the call's audio side (audiosocket/usage.py).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import costs
from db.costs import BudgetStop, Scope, UsageEntry
from db.models import Call, UsageKind
from opendeep.prices import Priced, TokenUsage, price_usage, trunk_cost_microusd
from opendeep.settings import Settings

log = logging.getLogger(__name__)
_warned: set[str] = set()   # models already logged as unpriced by this process


def unpriced_models(settings: Settings) -> list[str]:
    """The configured models (OPENAI_*_MODEL) that MODEL_PRICES has no price for."""
    models = {settings.openai_realtime_model, settings.openai_transcribe_model, settings.openai_chat_model,
              settings.openai_analyzer_model}
    return sorted(model for model in models if settings.model_prices.price_for(model) is None)


def warn_unpriced_once(kind: UsageKind, model: str, reason: str) -> None:
    """Log (once per model and process) that a usage is recorded without a cost, and why."""
    if model not in _warned:
        _warned.add(model)
        log.warning("%s usage of %r is recorded without a cost: %s", kind.value, model, reason)


def warn_unpriced_models(settings: Settings) -> None:
    """Say at start which configured models will be recorded without a cost (and count nothing to budgets)."""
    for model in unpriced_models(settings):
        _warned.add(model)
        log.warning("MODEL_PRICES has no price for model %r: its usage is recorded without a cost and counts "
                    "nothing towards campaign budgets", model)


def _count(data: Any, key: str) -> int:
    value = getattr(data, key, None) if data is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def chat_token_usage(usage: Any) -> TokenUsage:
    """A chat completion's `usage` (openai CompletionUsage: prompt_tokens with prompt_tokens_details.cached_tokens
    and audio_tokens, completion_tokens with completion_tokens_details.audio_tokens) -> TokenUsage."""
    if usage is None:
        return TokenUsage()
    prompt, completion = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
    details_in = getattr(usage, "prompt_tokens_details", None)
    details_out = getattr(usage, "completion_tokens_details", None)
    audio_in, audio_out = _count(details_in, "audio_tokens"), _count(details_out, "audio_tokens")
    text_in = max(prompt - audio_in, 0)
    cached = min(_count(details_in, "cached_tokens"), text_in)
    return TokenUsage(text_in=text_in - cached, text_cached_in=cached, text_out=max(completion - audio_out, 0),
                      audio_in=audio_in, audio_out=audio_out)


async def record_chat_usage(sessions: async_sessionmaker[AsyncSession], settings: Settings, scope: Scope,
                            kind: UsageKind, model: str, usages: list[Any]) -> BudgetStop | None:
    """Price and store what one or more chat completions used (their `usage` objects), in one transaction.
    Never raises: a cost record must not fail the analysis, summary or chat turn it belongs to."""
    total = TokenUsage()
    for usage in usages:
        total = total + chat_token_usage(usage)
    if total.empty:
        return None
    priced = price_usage(settings.model_prices, model, total)
    if priced.cost_microusd is None:
        warn_unpriced_once(kind, model, priced.unpriced_reason)
    try:
        async with sessions() as session, session.begin():
            return await costs.record_usage(session, scope, UsageEntry(kind, model, total, priced))
    except Exception:
        log.exception("%s usage of user %s (%s tokens) not recorded", kind.value, scope.user_id, total.total_tokens)
        return None


def answered_seconds(call: Call) -> int:
    """Trunk time of a call: from the callee's answer to the hangup, in whole seconds (rounded up)."""
    if call.answered_at is None or call.ended_at is None:
        return 0
    return max(0, math.ceil((call.ended_at - call.answered_at).total_seconds()))


async def record_trunk_usage(session: AsyncSession, settings: Settings, call: Call) -> BudgetStop | None:
    """Record an ended call's answered seconds and their trunk cost (TRUNK_PRICE_PER_MINUTE, billed in
    TRUNK_BILLING_INCREMENT_SECONDS), in the caller's transaction. Nothing for a call never answered."""
    seconds = answered_seconds(call)
    if seconds == 0:
        return None
    scope = await costs.call_scope(session, call.user_id, call.id)
    if scope is None:
        return None
    price = settings.trunk_price_per_minute
    increment = settings.trunk_billing_increment_seconds
    priced = Priced(trunk_cost_microusd(seconds, price, increment), "TRUNK_PRICE_PER_MINUTE",
                    {"per_minute": price, "increment_seconds": increment})
    return await costs.record_usage(session, scope, UsageEntry(UsageKind.TRUNK, "trunk", TokenUsage(), priced,
                                                               seconds=seconds))
