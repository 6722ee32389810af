"""What usage costs: MODEL_PRICES parsed and checked at start, tokens priced in exact micro-dollars, trunk minutes
in billing increments, and the Realtime / chat usage objects read the way the API defines them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from audiosocket.usage import realtime_usage, transcription_usage
from opendeep.costs import chat_token_usage
from opendeep.prices import (
    DEFAULT_MODEL_PRICES,
    TokenUsage,
    format_usd,
    parse_budget,
    parse_model_prices,
    price_usage,
    trunk_cost_microusd,
    usd_to_microusd,
)
from opendeep.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_a_realtime_response_is_priced_per_token_kind_with_cached_input_at_its_own_price():
    table = parse_model_prices("")
    usage = TokenUsage(text_in=1000, text_cached_in=2000, text_out=50, audio_in=300, audio_cached_in=700,
                       audio_out=400)
    priced = price_usage(table, "gpt-realtime", usage)
    # gpt-realtime, USD per 1M: text 4 / 0.40 cached / 16, audio 32 / 0.40 cached / 64 -> tokens x price = µUSD
    expected = 1000 * 4 + 2000 * 0.4 + 50 * 16 + 300 * 32 + 700 * 0.4 + 400 * 64
    assert priced.cost_microusd == round(expected) == 41_080
    assert priced.price_name == "gpt-realtime" and priced.price == DEFAULT_MODEL_PRICES["gpt-realtime"]
    assert format_usd(priced.cost_microusd) == "$0.0411"


def test_a_dated_snapshot_is_priced_as_its_model_and_the_longest_name_wins():
    table = parse_model_prices("")
    assert price_usage(table, "gpt-realtime-2025-08-28", TokenUsage(audio_out=1_000_000)).cost_microusd == 64_000_000
    # gpt-realtime-mini is its own entry, not gpt-realtime's
    mini = price_usage(table, "gpt-realtime-mini-2025-10-06", TokenUsage(audio_out=1_000_000))
    assert (mini.price_name, mini.cost_microusd) == ("gpt-realtime-mini", 20_000_000)


def test_a_model_or_token_kind_without_a_price_is_never_silently_free():
    table = parse_model_prices('{"local-llm": {"text_in": 0, "text_out": 0}}')
    assert price_usage(table, "local-llm", TokenUsage(text_in=10, text_out=5)).cost_microusd == 0
    unknown = price_usage(table, "gpt-realtime", TokenUsage(audio_out=10))
    assert unknown.cost_microusd is None and "no price for model 'gpt-realtime'" in unknown.unpriced_reason
    audio = price_usage(table, "local-llm", TokenUsage(audio_in=10))
    assert audio.cost_microusd is None and "has no audio_in price" in audio.unpriced_reason


def test_a_missing_cached_price_falls_back_to_the_uncached_one():
    table = parse_model_prices('{"m": {"text_in": 2.5, "text_out": 10}}')
    assert price_usage(table, "m", TokenUsage(text_cached_in=1000)).cost_microusd == 2500


def test_duration_billed_transcription_is_priced_per_minute():
    priced = price_usage(parse_model_prices(""), "whisper-1", TokenUsage(seconds=90))
    assert priced.cost_microusd == 9000   # 1.5 min x $0.006


@pytest.mark.parametrize(("seconds", "price", "increment", "expected"), [
    (61, 1.2, 1, 1_220_000),    # per second: 61/60 x $1.20
    (61, 1.2, 60, 2_400_000),   # per started minute: 2 minutes
    (59, 0.006, 6, 6000),       # 6-second increments: 60 s
    (0, 1.2, 1, 0),
    (30, 0, 1, 0),              # TRUNK_PRICE_PER_MINUTE=0: counted, free
])
def test_trunk_minutes_are_billed_in_whole_increments(seconds, price, increment, expected):
    assert trunk_cost_microusd(seconds, price, increment) == expected


def test_usd_amounts_and_budgets_are_exact_micro_dollars():
    assert usd_to_microusd("12.50") == 12_500_000 and usd_to_microusd(0.1) == 100_000
    assert parse_budget("$25") == 25_000_000 and parse_budget("") is None and parse_budget(None) is None
    for bad in ("-1", "abc", "nan", "0", True, "2000000"):
        with pytest.raises(ValueError):
            parse_budget(bad)


def test_realtime_usage_keeps_cached_input_apart_as_the_api_counts_it():
    # The shape of response.done's response.usage (openai.types.realtime.RealtimeResponseUsage); cached tokens
    # are part of the input counts.
    usage = realtime_usage({
        "total_tokens": 821, "input_tokens": 789, "output_tokens": 32,
        "input_token_details": {"text_tokens": 313, "audio_tokens": 476, "cached_tokens": 640,
                                "cached_tokens_details": {"text_tokens": 256, "audio_tokens": 384}},
        "output_token_details": {"text_tokens": 9, "audio_tokens": 23}})
    assert usage == TokenUsage(text_in=57, text_cached_in=256, text_out=9, audio_in=92, audio_cached_in=384,
                               audio_out=23)
    assert usage.total_tokens == 821
    # A server that sends nonsense costs nothing and breaks nothing.
    assert realtime_usage({"input_tokens": "many", "input_token_details": []}) == TokenUsage()
    assert realtime_usage(None).empty


def test_transcription_usage_by_tokens_or_by_duration():
    assert transcription_usage({"type": "tokens", "input_tokens": 12, "output_tokens": 4,
                                "input_token_details": {"text_tokens": 2, "audio_tokens": 10}}) == \
        TokenUsage(text_in=2, audio_in=10, text_out=4)
    assert transcription_usage({"type": "duration", "seconds": 3.5}) == TokenUsage(seconds=3.5)


def test_chat_usage_separates_cached_prompt_tokens():
    usage = SimpleNamespace(prompt_tokens=2000, completion_tokens=100,
                            prompt_tokens_details=SimpleNamespace(cached_tokens=1536, audio_tokens=0),
                            completion_tokens_details=SimpleNamespace(audio_tokens=0, reasoning_tokens=0))
    assert chat_token_usage(usage) == TokenUsage(text_in=464, text_cached_in=1536, text_out=100)
    assert chat_token_usage(None).empty


@pytest.mark.parametrize(("raw", "says"), [
    ("{not json", "not valid JSON"),
    ("[]", "expected a non-empty JSON object"),
    ('{"gpt-realtime": {"audio_inn": 32}}', "gpt-realtime.audio_inn: unknown price kind"),
    ('{"gpt-realtime": {"audio_in": "32"}}', "gpt-realtime.audio_in: expected a number"),
    ('{"gpt-realtime": {"audio_in": -1}}', "outside 0..100000"),
    ('{"gpt-realtime": {}}', "expected an object of prices"),
])
def test_bad_model_prices_stop_the_start_with_the_setting_named(raw, says):
    with pytest.raises(SettingsError) as error:
        load_settings({"MODEL_PRICES": raw}, dotenv=None)
    assert str(error.value).startswith("MODEL_PRICES=") and says in str(error.value)


def test_the_cli_refuses_to_start_with_bad_model_prices(tmp_path):
    result = subprocess.run([sys.executable, "-m", "opendeep.cli", "db", "upgrade"], cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                                 "MODEL_PRICES": '{"gpt-realtime": {"audio_out": "sixty-four"}}'},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("opendeep: invalid setting MODEL_PRICES=") and "audio_out: expected a number" in line


def test_configured_prices_replace_the_defaults():
    settings = load_settings({"MODEL_PRICES": '{"gpt-realtime": {"audio_out": 50}}',
                              "TRUNK_PRICE_PER_MINUTE": "0.01"}, dotenv=None)
    assert list(settings.model_prices.models) == ["gpt-realtime"]
    assert settings.trunk_price_per_minute == 0.01 and settings.trunk_billing_increment_seconds == 1


def test_configured_models_without_a_price_are_named_at_start(caplog):
    from opendeep.costs import unpriced_models, warn_unpriced_models

    settings = load_settings({"MODEL_PRICES": '{"gpt-realtime": {"audio_out": 64}}',
                              "OPENAI_CHAT_MODEL": "my-local-model"}, dotenv=None)
    assert unpriced_models(settings) == ["gpt-4.1-mini", "gpt-4o-mini-transcribe", "my-local-model"]
    assert unpriced_models(load_settings({}, dotenv=None)) == []   # the defaults price every default model
    with caplog.at_level("WARNING", logger="opendeep.costs"):
        warn_unpriced_models(settings)
    assert any("no price for model 'my-local-model'" in record.message for record in caplog.records)
