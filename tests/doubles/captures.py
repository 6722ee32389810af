"""Where the Asterisk captures live: tests/captures/, recorded from a real Asterisk 22.10.1 (see its README.md)."""

from __future__ import annotations

from pathlib import Path

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
