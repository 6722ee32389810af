"""Settings: defaults, one clear line for a bad value, and the README/.env.example listing every setting."""

import subprocess
import sys
from datetime import time
from pathlib import Path

import pytest

from opendeep.settings import SETTINGS, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_embedded_setup():
    settings = load_settings({}, dotenv=None)
    assert settings.database_url == "sqlite+aiosqlite:///./opendeep.db"
    assert str(settings.fastagi_bind) == "127.0.0.1:4573"
    assert str(settings.audiosocket_bind) == "127.0.0.1:9092"
    assert str(settings.web_bind) == "127.0.0.1:8000"
    assert settings.default_calling_window.start == time(9, 0)
    assert settings.default_calling_window.end == time(20, 0)
    assert not settings.app_test_mode and settings.effective_max_concurrent_calls == settings.max_concurrent_calls


@pytest.mark.parametrize("env, named", [
    ({"FASTAGI_BIND": "4573"}, "FASTAGI_BIND"),
    ({"MAX_CONCURRENT_CALLS": "0"}, "MAX_CONCURRENT_CALLS"),
    ({"MAX_CONCURRENT_CALLS": "many"}, "MAX_CONCURRENT_CALLS"),
    ({"DEFAULT_CALLING_WINDOW": "9-20"}, "DEFAULT_CALLING_WINDOW"),
    ({"DEFAULT_CALLING_WINDOW": "25:00-26:00"}, "DEFAULT_CALLING_WINDOW"),
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ({"APP_TEST_MODE": "maybe"}, "APP_TEST_MODE"),
    ({"APP_TEST_MODE": "true"}, "APP_TEST_MODE_REDIRECT_NUMBER"),
    ({"APP_TEST_MODE_REDIRECT_NUMBER": "555-1234"}, "APP_TEST_MODE_REDIRECT_NUMBER"),
    ({"RETRY_JITTER": "1.5"}, "RETRY_JITTER"),
])
def test_an_invalid_value_names_the_setting(env, named):
    with pytest.raises(SettingsError) as error:
        load_settings(env, dotenv=None)
    assert str(error.value).startswith(named)


def test_secrets_are_not_echoed_in_errors():
    with pytest.raises(SettingsError) as error:
        load_settings({"AMI_PORT": "x", "AMI_SECRET": "hunter2"}, dotenv=None)
    assert "hunter2" not in str(error.value)


def test_test_mode_forces_one_call_at_a_time():
    settings = load_settings({"APP_TEST_MODE": "1", "APP_TEST_MODE_REDIRECT_NUMBER": "+14155550100",
                              "MAX_CONCURRENT_CALLS": "10"}, dotenv=None)
    assert settings.effective_max_concurrent_calls == 1


def test_environment_wins_over_dotenv_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nAMI_HOST=10.0.0.5\nexport AMI_PORT='5039'\nLOG_LEVEL=debug\n")
    settings = load_settings({"AMI_HOST": "pbx.local"}, dotenv=env_file)
    assert (settings.ami_host, settings.ami_port, settings.log_level) == ("pbx.local", 5039, "DEBUG")


def test_cli_prints_one_line_and_exits_2_on_a_bad_setting(tmp_path):
    result = subprocess.run([sys.executable, "-m", "opendeep.cli", "db", "upgrade"], cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "WEB_BIND": "nowhere"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "opendeep: invalid setting WEB_BIND='nowhere': expected HOST:PORT with a port from 1 to 65535"]


@pytest.mark.parametrize("document", ["README.md", ".env.example"])
def test_every_setting_is_documented(document):
    text = (ROOT / document).read_text()
    missing = [s.env for s in SETTINGS if s.env not in text]
    assert not missing, f"{document} does not mention {missing}"


def test_env_example_defaults_match_the_code():
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.lstrip("# ")
        if "=" in line and line.split("=", 1)[0].isupper():
            key, value = line.split("=", 1)
            setting = next((s for s in SETTINGS if s.env == key), None)
            assert setting is not None, f".env.example names unknown setting {key}"
            if not setting.secret and value:
                assert value == setting.default, f"{key}: .env.example says {value!r}, code {setting.default!r}"
