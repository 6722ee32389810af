"""Is one recording inside another? Loudness envelopes (RMS per 20 ms) compared by correlation.

What Asterisk recorded went through G.711 and Asterisk's mixing, so the bytes differ; the shape of the speech
over time does not. A match of the whole envelope, from its first frame, means the audio arrived from its start.
"""

from __future__ import annotations

import math
import warnings
import wave
from pathlib import Path

with warnings.catch_warnings():   # deprecated in 3.11-3.12, the audioop-lts package from 3.13 on
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAME_BYTES = 320  # 20 ms of slin 8 kHz


def envelope(slin: bytes) -> list[float]:
    return [float(audioop.rms(slin[i:i + FRAME_BYTES], 2)) for i in range(0, len(slin) - FRAME_BYTES + 1,
                                                                          FRAME_BYTES)]


def mulaw_to_slin(mulaw: bytes) -> bytes:
    return audioop.ulaw2lin(mulaw, 2)


def read_wav(path: Path) -> bytes:
    """The samples of a WAV Asterisk wrote (slin 8 kHz mono)."""
    with wave.open(str(path), "rb") as handle:
        assert (handle.getframerate(), handle.getnchannels(), handle.getsampwidth()) == (8000, 1, 2), path
        return handle.readframes(handle.getnframes())


def _correlation(a: list[float], b: list[float]) -> float:
    n = len(a)
    mean_a, mean_b = sum(a) / n, sum(b) / n
    cov = sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b, strict=True))
    var_a = sum((x - mean_a) ** 2 for x in a)
    var_b = sum((y - mean_b) ** 2 for y in b)
    return cov / math.sqrt(var_a * var_b) if var_a and var_b else 0.0


def trim_silence(slin: bytes, threshold: float = 200.0) -> bytes:
    """The audio from its first to its last frame louder than `threshold`."""
    levels = envelope(slin)
    loud = [i for i, level in enumerate(levels) if level > threshold]
    return slin[loud[0] * FRAME_BYTES:(loud[-1] + 1) * FRAME_BYTES] if loud else b""


def find(needle: bytes, haystack: bytes) -> tuple[int, float]:
    """(offset in ms, correlation) of the best alignment of the whole `needle` envelope inside `haystack`.

    Frames of digital silence (RMS exactly 0) are left out of both: on a loaded machine Asterisk now and then
    records one in the middle of speech, in place of a late frame or between two, which would shift the rest of
    the envelope by 20 ms. Speech that went through G.711 is never exactly 0 for 20 ms."""
    small = [level for level in envelope(needle) if level > 0]
    levels = envelope(haystack)
    kept = [i for i, level in enumerate(levels) if level > 0]
    big = [levels[i] for i in kept]
    if not small or len(big) < len(small):
        return -1, 0.0
    best = max(range(len(big) - len(small) + 1), key=lambda i: _correlation(small, big[i:i + len(small)]))
    return kept[best] * 20, _correlation(small, big[best:best + len(small)])
