"""Prometheus metrics: states and counts only, never a tenant's data (no user, number, name or text in a label).

One registry per process. Each component updates the metrics it owns; the web UI serves the registry at /metrics
when METRICS_ENABLED is on. Labels take only values from the fixed sets named beside each metric.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# Calls and the AMI controller.
CALLS_IN_PROGRESS = Gauge("opendeep_calls_in_progress", "Calls originated and not yet ended", registry=REGISTRY)
ORIGINATES = Counter("opendeep_originates_total", "Originate actions sent to Asterisk, by result "
                     "(accepted, refused, error)", ["result"], registry=REGISTRY)
CALL_OUTCOMES = Counter("opendeep_call_outcomes_total", "Ended calls by outcome (answered, busy, no_answer, "
                        "congestion, failed, ...)", ["outcome"], registry=REGISTRY)
AMI_CONNECTED = Gauge("opendeep_ami_connected", "1 while the AMI connection is logged in", registry=REGISTRY)

# FastAGI.
FASTAGI_SESSIONS = Counter("opendeep_fastagi_sessions_total", "FastAGI sessions by route and result (ok, refused, "
                           "error)", ["route", "result"], registry=REGISTRY)
FASTAGI_SECONDS = Histogram("opendeep_fastagi_session_seconds", "FastAGI session time, first byte to reply",
                            ["route"], registry=REGISTRY,
                            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))

# AudioSocket and the realtime model.
AUDIOSOCKET_LIVE_CALLS = Gauge("opendeep_audiosocket_live_calls", "AudioSocket connections bridged to a model",
                               registry=REGISTRY)
FRAME_LATENESS = Histogram("opendeep_audiosocket_frame_lateness_seconds", "How late each 20 ms frame to Asterisk "
                           "left against its schedule", registry=REGISTRY,
                           buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.1, 0.5))
MODEL_CONNECT_SECONDS = Histogram("opendeep_model_connect_seconds", "Time to open a realtime model session",
                                  registry=REGISTRY, buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0))
MODEL_FIRST_AUDIO_SECONDS = Histogram("opendeep_model_first_audio_seconds", "From the call's answer to the model's "
                                      "first audio sent to Asterisk", registry=REGISTRY,
                                      buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0))

# After the call.
ANALYZER_QUEUE = Gauge("opendeep_analyzer_queue_depth", "Ended calls waiting for the analyzer", registry=REGISTRY)
WEBHOOK_DELIVERIES = Counter("opendeep_webhook_deliveries_total", "Webhook delivery attempts by result "
                             "(delivered, failed, gave_up)", ["result"], registry=REGISTRY)
