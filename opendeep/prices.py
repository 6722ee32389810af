"""What model usage and trunk minutes cost: the price table (MODEL_PRICES) and the arithmetic, nothing else.

Money is kept as whole micro-dollars (1 USD = 1,000,000 µUSD) in integers, so sums are exact on SQLite and
PostgreSQL alike. A price is USD per 1M tokens, so `tokens x price` is already micro-dollars.

Token kinds follow the OpenAI usage objects. Cached input is part of the input count there (the Realtime
`response.done` usage and chat `prompt_tokens_details` both say so); a `TokenUsage` keeps it apart, so the
uncached and cached parts are each priced once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

MICRO = 1_000_000

# USD per 1M tokens (per minute for `per_minute`). OpenAI's published list prices for the models OpenDeep uses by
# default, as known on 2026-12-02 (gpt-realtime: the GA price of 2025-08-28; source: https://openai.com/api/pricing
# and the model pages). They are a starting point only: configure MODEL_PRICES to your contract.
DEFAULT_MODEL_PRICES: dict[str, dict[str, float]] = {
    "gpt-realtime": {"text_in": 4.00, "text_cached_in": 0.40, "text_out": 16.00,
                     "audio_in": 32.00, "audio_cached_in": 0.40, "audio_out": 64.00},
    "gpt-realtime-mini": {"text_in": 0.60, "text_cached_in": 0.06, "text_out": 2.40,
                          "audio_in": 10.00, "audio_cached_in": 0.30, "audio_out": 20.00},
    "gpt-4.1-mini": {"text_in": 0.40, "text_cached_in": 0.10, "text_out": 1.60},
    "gpt-4.1": {"text_in": 2.00, "text_cached_in": 0.50, "text_out": 8.00},
    "gpt-4o-mini-transcribe": {"text_in": 1.25, "audio_in": 3.00, "text_out": 5.00},
    "gpt-4o-transcribe": {"text_in": 2.50, "audio_in": 6.00, "text_out": 10.00},
    "whisper-1": {"per_minute": 0.006},
}

PRICE_KEYS = ("text_in", "text_cached_in", "text_out", "audio_in", "audio_cached_in", "audio_out", "per_minute")
MAX_PRICE = 100_000.0   # USD per 1M tokens: anything above is a typo (a price per token, or in cents)


@dataclass(frozen=True)
class TokenUsage:
    """Tokens of one model request (or one Realtime response), cached input kept apart from uncached."""

    text_in: int = 0
    text_cached_in: int = 0
    text_out: int = 0
    audio_in: int = 0
    audio_cached_in: int = 0
    audio_out: int = 0
    seconds: float = 0.0      # duration-billed models (whisper-1): audio seconds

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @property
    def total_tokens(self) -> int:
        return (self.text_in + self.text_cached_in + self.text_out + self.audio_in + self.audio_cached_in
                + self.audio_out)

    @property
    def empty(self) -> bool:
        return self.total_tokens == 0 and not self.seconds


@dataclass(frozen=True)
class ModelPrice:
    """One model's prices, USD per 1M tokens (per_minute: USD per audio minute). None: not priced."""

    text_in: float | None = None
    text_cached_in: float | None = None
    text_out: float | None = None
    audio_in: float | None = None
    audio_cached_in: float | None = None
    audio_out: float | None = None
    per_minute: float | None = None

    def as_dict(self) -> dict[str, float]:
        return {key: value for key in PRICE_KEYS if (value := getattr(self, key)) is not None}


@dataclass(frozen=True)
class PriceTable:
    """MODEL_PRICES, parsed. Lookup is exact first, then the longest configured name the model starts with
    followed by '-' (a dated snapshot such as gpt-realtime-2025-08-28 is priced as gpt-realtime)."""

    models: Mapping[str, ModelPrice]

    def price_for(self, model: str) -> tuple[str, ModelPrice] | None:
        if model in self.models:
            return model, self.models[model]
        matches = [name for name in self.models if model.startswith(name + "-")]
        if not matches:
            return None
        name = max(matches, key=len)
        return name, self.models[name]


@dataclass(frozen=True)
class Priced:
    """A usage priced: micro-dollars, or None with the reason it could not be priced."""

    cost_microusd: int | None
    price_name: str | None          # the MODEL_PRICES entry used
    price: dict[str, float] | None  # its prices at the time (stored with the usage: history never changes)
    unpriced_reason: str = ""


def _rounded(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def price_usage(table: PriceTable, model: str, usage: TokenUsage) -> Priced:
    """What `usage` of `model` costs by `table`. A token kind with tokens but no price makes the whole usage
    unpriced (never a silent 0); a missing cached price falls back to the uncached one (costs more, never less)."""
    found = table.price_for(model)
    if found is None:
        return Priced(None, None, None, f"no price for model {model!r} in MODEL_PRICES")
    name, price = found
    total = Decimal(0)
    pairs = (("text_in", usage.text_in, price.text_in),
             ("text_cached_in", usage.text_cached_in,
              price.text_cached_in if price.text_cached_in is not None else price.text_in),
             ("text_out", usage.text_out, price.text_out),
             ("audio_in", usage.audio_in, price.audio_in),
             ("audio_cached_in", usage.audio_cached_in,
              price.audio_cached_in if price.audio_cached_in is not None else price.audio_in),
             ("audio_out", usage.audio_out, price.audio_out))
    for kind, tokens, usd_per_million in pairs:
        if not tokens:
            continue
        if usd_per_million is None:
            return Priced(None, name, price.as_dict(), f"MODEL_PRICES[{name!r}] has no {kind} price")
        total += Decimal(tokens) * Decimal(str(usd_per_million))   # tokens x USD/1M = µUSD
    if usage.seconds:
        if price.per_minute is None:
            return Priced(None, name, price.as_dict(), f"MODEL_PRICES[{name!r}] has no per_minute price")
        total += Decimal(str(usage.seconds)) / 60 * Decimal(str(price.per_minute)) * MICRO
    return Priced(_rounded(total), name, price.as_dict())


def trunk_cost_microusd(answered_seconds: int, price_per_minute: float, increment_seconds: int = 1) -> int:
    """A call's trunk cost: answered time rounded up to whole billing increments, times the per-minute price."""
    if answered_seconds <= 0 or price_per_minute <= 0:
        return 0
    billed = math.ceil(answered_seconds / increment_seconds) * increment_seconds
    return _rounded(Decimal(billed) / 60 * Decimal(str(price_per_minute)) * MICRO)


def usd_to_microusd(usd: Any) -> int:
    """A USD amount (number or numeric string) as whole micro-dollars; ValueError for anything else."""
    if isinstance(usd, bool):
        raise ValueError("expected an amount in USD, e.g. 25 or 12.50")
    try:
        value = Decimal(str(usd).strip())
    except ArithmeticError:
        raise ValueError("expected an amount in USD, e.g. 25 or 12.50") from None
    if not value.is_finite() or value < 0:
        raise ValueError("expected an amount in USD of at least 0")
    if value > 10_000_000:
        raise ValueError("expected an amount in USD of at most 10,000,000")
    return _rounded(value * MICRO)


MAX_BUDGET_USD = 1_000_000


def parse_budget(raw: Any) -> int | None:
    """A campaign budget as given in a form, CSV import or the API ("", None: no budget) -> micro-dollars.
    ValueError says what is wrong."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    microusd = usd_to_microusd(raw.strip().removeprefix("$") if isinstance(raw, str) else raw)
    if microusd <= 0:
        raise ValueError("a budget must be above 0 USD (leave it empty for no budget)")
    if microusd > MAX_BUDGET_USD * MICRO:
        raise ValueError(f"a budget must be at most {MAX_BUDGET_USD:,} USD")
    return microusd


def format_usd(microusd: int | None, places: int = 4) -> str:
    """Micro-dollars for people: $1.2345 (None: '—')."""
    if microusd is None:
        return "—"
    return f"${Decimal(microusd) / MICRO:,.{places}f}"


def parse_model_prices(raw: str) -> PriceTable:
    """MODEL_PRICES: empty = the documented defaults; otherwise a JSON object {model: {kind: USD per 1M tokens}}
    with kinds from PRICE_KEYS. It replaces the defaults entirely (what you configure is what is charged).
    ValueError says exactly what is wrong."""
    if not raw.strip():
        return PriceTable({name: ModelPrice(**prices) for name, prices in DEFAULT_MODEL_PRICES.items()})
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at char {exc.pos}); expected "
                         '{"MODEL": {"text_in": 4.0, "text_out": 16.0, ...}}') from None
    if not isinstance(data, dict) or not data:
        raise ValueError('expected a non-empty JSON object {"MODEL": {"text_in": 4.0, ...}}')
    models: dict[str, ModelPrice] = {}
    for name, prices in data.items():
        if not name.strip():
            raise ValueError("a model name is empty")
        if not isinstance(prices, dict) or not prices:
            raise ValueError(f"{name}: expected an object of prices such as {{\"text_in\": 0.4}}")
        for key, value in prices.items():
            if key not in PRICE_KEYS:
                raise ValueError(f"{name}.{key}: unknown price kind; use {', '.join(PRICE_KEYS)}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name}.{key}: expected a number (USD per 1M tokens), not {value!r}")
            if not 0 <= value <= MAX_PRICE:
                raise ValueError(f"{name}.{key}: {value} is outside 0..{MAX_PRICE:g} USD per 1M tokens")
        models[name] = ModelPrice(**{key: float(value) for key, value in prices.items()})
    return PriceTable(models)
