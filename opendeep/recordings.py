"""Call recordings: where each is (`RECORDINGS_DIR/<user id>/<call id>.wav`, written by Asterisk's MixMonitor on
the call's ;1 half, read by the web UI for its tenant only) and their deletion after RECORDING_RETENTION_DAYS."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from opendeep.settings import Settings

log = logging.getLogger(__name__)


def recordings_root(settings: Settings) -> Path:
    return Path(settings.recordings_dir).resolve()


def recording_path(settings: Settings, user_id: int, call_id: int) -> Path:
    """The recording of one call (absolute: Asterisk writes it, so the path must mean the same to both)."""
    return recordings_root(settings) / str(int(user_id)) / f"{int(call_id)}.wav"


def delete_expired_recordings(settings: Settings, now: datetime) -> int:
    """Delete recordings last written more than RECORDING_RETENTION_DAYS before `now`; returns how many."""
    cutoff = (now - timedelta(days=settings.recording_retention_days)).timestamp()
    deleted = 0
    for path in recordings_root(settings).glob("*/*.wav"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                deleted += 1
        except FileNotFoundError:   # deleted meanwhile (another process's pass)
            continue
    if deleted:
        log.info("deleted %d recordings older than %d days", deleted, settings.recording_retention_days)
    return deleted
