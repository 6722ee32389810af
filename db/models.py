"""SQLAlchemy 2.0 models. Every tenant row carries `user_id`; statuses are enums stored as their values."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import (
    true as sa_true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.types import UTCDateTime, utcnow


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e],
                validate_strings=True, name=cls.__name__.lower())


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    ON_HOLD = "on_hold"
    RETRY_SCHEDULED = "retry_scheduled"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CANCELLED_DND = "cancelled_dnd"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_TASK_STATUSES


TERMINAL_TASK_STATUSES = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.CANCELLED_DND}
)
# Which states are due, and the moves between states: db/task_life.py.


class CampaignStatus(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class CampaignGoal(enum.StrEnum):
    """When a campaign has done its job (the planner states it, the user confirms it)."""

    EACH_TARGET = "each_target"                 # every target is called for its own result (ask all 40 shops)
    UNTIL_ONE_SUCCEEDS = "until_one_succeeds"   # targets in turn; the first success cancels the rest
    BEST_OF = "best_of"                         # every target for an offer, then the best is chosen (best_of.py)


class CallStatus(enum.StrEnum):
    CREATED = "created"          # row written, Originate not yet sent
    ORIGINATING = "originating"  # Originate queued by Asterisk
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


class CallOutcome(enum.StrEnum):
    """How the telephony side ended. What the call achieved is the analyzer's verdict (`calls.analysis`)."""

    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CONGESTION = "congestion"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DND_BLOCKED = "dnd_blocked"
    VOICEMAIL = "voicemail"            # a machine answered (AMD or the call AI); no message left
    VOICEMAIL_LEFT = "voicemail_left"  # a machine answered and the call AI left the task's message after the beep
    FAILED_AI = "failed_ai"

    @property
    def needs_analysis(self) -> bool:
        """Somebody (or a machine) was on the line: the post-call analyzer reads the call. The others (never
        connected, or blocked by a do-not-call list) are decided by rule when the call ends."""
        return self in ANALYZED_OUTCOMES


ANALYZED_OUTCOMES = frozenset({CallOutcome.ANSWERED, CallOutcome.VOICEMAIL, CallOutcome.VOICEMAIL_LEFT,
                               CallOutcome.FAILED_AI})


class CallDirection(enum.StrEnum):
    OUTBOUND = "outbound"   # OpenDeep dialed (AMI Originate)
    INBOUND = "inbound"     # a callee rang back the number that called them ([opendeep-inbound])


class VoicemailAction(enum.StrEnum):
    """What a campaign does when a machine answers (its plan's `voicemail.action`)."""

    HANG_UP = "hang_up"              # hang up and retry later
    LEAVE_MESSAGE = "leave_message"  # wait for the beep, speak the task's message, hang up


class Speaker(enum.StrEnum):
    AGENT = "agent"
    CALLEE = "callee"
    SYSTEM = "system"


class FeedbackStatus(enum.StrEnum):
    PENDING = "pending"
    ANSWERED = "answered"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


class UsageKind(enum.StrEnum):
    """What a usage record paid for."""

    CALL_AI = "call_ai"              # the realtime model on a call (its response.done usage)
    TRANSCRIPTION = "transcription"  # the callee's side transcribed during a call
    ANALYZER = "analyzer"            # the post-call analyzer's verdict on a call
    SUMMARIZER = "summarizer"        # a finished campaign's summary
    ASSISTANT = "assistant"          # the web assistant (planner chat)
    TRUNK = "trunk"                  # answered minutes on the trunk


class PauseReason(enum.StrEnum):
    """Why OpenDeep (not the user) paused a campaign."""

    BUDGET_SPENT = "budget_spent"


class ChatRole(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"
    SYSTEM = "system"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    profile: Mapped[dict[str, Any]] = mapped_column(default=dict)
    preferences: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Bumped by logout and password change: a session cookie of an older version is refused.
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Callbacks (fastagi_server/callbacks.py): whether the call AI answers a callee who rings back, and who gets
    # the callbacks it does not take (one of the user's transfer targets; none = a polite message, then hangup).
    callback_ai: Mapped[bool] = mapped_column(Boolean, default=True, server_default=sa_true())
    # No foreign key (users <-> transfer_targets would be a cycle): read only through transfers.py, by user_id;
    # a deleted target simply falls back to the message.
    callback_fallback_target_id: Mapped[int | None] = mapped_column(Integer)
    # Display only (times are stored in UTC): the IANA zone the pages show times in; None = not known yet.
    time_zone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # ISO 3166 country for national-format numbers in this user's CSV, DND and plans; None = DEFAULT_REGION.
    default_region: Mapped[str | None] = mapped_column(String(2), nullable=True)
    # Set by an administrator: no login, no session, no dialing for this user.
    disabled_at: Mapped[datetime | None] = mapped_column(nullable=True)


class TransferTarget(Base):
    """Someone the user allows the call AI to hand a callee to, by name (the model never sees a free number)."""

    __tablename__ = "transfer_targets"
    __table_args__ = (UniqueConstraint("user_id", "name", name="uq_transfer_targets_user_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    phone_number: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    goal: Mapped[str] = mapped_column(Text, default="")
    master_prompt: Mapped[str] = mapped_column(Text, default="")
    # Local hours in the callee's zone, "HH:MM"; NULL = the DEFAULT_CALLING_WINDOW setting.
    window_start: Mapped[str | None] = mapped_column(String(5))
    window_end: Mapped[str | None] = mapped_column(String(5))
    status: Mapped[CampaignStatus] = mapped_column(_enum(CampaignStatus), default=CampaignStatus.ACTIVE)
    # The goal's kind (opendeep/campaign_goal.py): each target, or until one succeeds with `parallel_calls` at once.
    goal_type: Mapped[CampaignGoal] = mapped_column(_enum(CampaignGoal), default=CampaignGoal.EACH_TARGET,
                                                    server_default=CampaignGoal.EACH_TARGET.value)
    parallel_calls: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    goal_met_task_id: Mapped[int | None] = mapped_column(Integer)   # the task whose success met the goal
    # Best of several (opendeep/best_of.py): what "best" means, who decides ("ai" or "user"), what follows
    # ("report_only" or "book_with_chosen"); the choice once made (best_decided_at set in the same UPDATE), when
    # the user was asked to choose, and the follow-up task that accepts the chosen offer.
    best_criterion: Mapped[str | None] = mapped_column(Text)
    best_decide: Mapped[str | None] = mapped_column(String(8))
    best_then: Mapped[str | None] = mapped_column(String(24))
    best_choice: Mapped[dict[str, Any] | None] = mapped_column()
    best_decided_at: Mapped[datetime | None] = mapped_column()
    best_asked_at: Mapped[datetime | None] = mapped_column()
    best_followup_task_id: Mapped[int | None] = mapped_column(Integer)
    caller_id: Mapped[str | None] = mapped_column(String(80))      # NULL: the CALLER_ID setting
    plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Idempotency key of the confirm that created it: a double click finds this row instead of a second one.
    source_key: Mapped[str | None] = mapped_column(String(64))
    summary_text: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    summarized_at: Mapped[datetime | None] = mapped_column()
    voicemail_action: Mapped[VoicemailAction] = mapped_column(
        _enum(VoicemailAction), default=VoicemailAction.HANG_UP, server_default=VoicemailAction.HANG_UP.value)
    # Cost control (opendeep/prices.py, db/costs.py): micro-dollars. spent_microusd is the sum of the campaign's
    # usage_records, kept in the same transaction as each record, so a budget check is one row read.
    budget_microusd: Mapped[int | None] = mapped_column(BigInteger)
    spent_microusd: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    pause_reason: Mapped[PauseReason | None] = mapped_column(_enum(PauseReason))

    tasks: Mapped[list[Task]] = relationship(back_populates="campaign", order_by="Task.id")

    __table_args__ = (UniqueConstraint("user_id", "source_key", name="uq_campaign_source_key"),)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    target_name: Mapped[str] = mapped_column(String(200))
    phone_number: Mapped[str] = mapped_column(String(20))  # E.164
    objective: Mapped[str] = mapped_column(Text, default="")
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    language: Mapped[str] = mapped_column(String(16), default="en")
    status: Mapped[TaskStatus] = mapped_column(_enum(TaskStatus), default=TaskStatus.PENDING)
    status_reason: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    next_action_time: Mapped[datetime] = mapped_column(default=utcnow)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    inter_call_context: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # What the call AI says to an answering machine when the campaign leaves messages (written by the planner).
    voicemail_message: Mapped[str | None] = mapped_column(Text)
    # Waiting for its turn in an until-one-succeeds campaign: not due, whatever its time (scheduler.py).
    held: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    campaign: Mapped[Campaign] = relationship(back_populates="tasks")

    __table_args__ = (
        Index("ix_tasks_due", "status", "next_action_time"),
        Index("ix_tasks_user_status", "user_id", "status"),
    )


class Call(Base):
    __tablename__ = "calls"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    attempt_number: Mapped[int] = mapped_column(Integer)   # 0 for an inbound callback: not an attempt of ours
    direction: Mapped[CallDirection] = mapped_column(_enum(CallDirection), default=CallDirection.OUTBOUND,
                                                     server_default=CallDirection.OUTBOUND.value)
    status: Mapped[CallStatus] = mapped_column(_enum(CallStatus), default=CallStatus.CREATED)
    outcome: Mapped[CallOutcome | None] = mapped_column(_enum(CallOutcome))
    dialed_number: Mapped[str] = mapped_column(String(20))   # the callee's number (inbound: the caller's)
    channel: Mapped[str | None] = mapped_column(String(128))
    asterisk_uniqueid: Mapped[str | None] = mapped_column(String(64), index=True)   # the ;1 half (ChannelId)
    asterisk_other_uniqueid: Mapped[str | None] = mapped_column(String(64))          # the ;2 half (agi_uniqueid)
    asterisk_linkedid: Mapped[str | None] = mapped_column(String(64))
    ami_action_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    asterisk_server: Mapped[str | None] = mapped_column(String(32))     # ASTERISK_SERVERS name; None: the first
    audiosocket_uuid: Mapped[str | None] = mapped_column(String(36), unique=True)
    audiosocket_claimed_at: Mapped[datetime | None] = mapped_column()   # its first connection: the only one
    transfer_number: Mapped[str | None] = mapped_column(String(20))     # the transfer OpenDeep allowed, if any
    bridged_to_ai: Mapped[bool] = mapped_column(Boolean, default=False)
    dial_status: Mapped[str | None] = mapped_column(String(32))
    hangup_cause: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    answered_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()
    duration_seconds: Mapped[int | None] = mapped_column(Integer)
    analysis: Mapped[dict[str, Any] | None] = mapped_column()
    analyzed_at: Mapped[datetime | None] = mapped_column()
    # The post-call analyzer's claim (opendeep/analyzer.py): token + lease, so two analyzers never apply twice.
    analysis_claim: Mapped[str | None] = mapped_column(String(36))
    analysis_locked_until: Mapped[datetime | None] = mapped_column()
    analysis_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        # The status strip on every page: calls in progress (status IN the open ones, per user and in all), and
        # the latest call the AI took / the latest analysis of a user (newest first, stops at the first row).
        Index("ix_calls_status_user", "status", "user_id"),
        Index("ix_calls_user_ended", "user_id", "ended_at"),
        Index("ix_calls_user_analyzed", "user_id", "analyzed_at"),
        Index("ix_calls_server_status", "asterisk_server", "status"),
        # A callback is matched to the latest call to the caller's number (fastagi_server/callbacks.py).
        Index("ix_calls_number_started", "dialed_number", "started_at"),
        Index("ix_calls_user_created", "user_id", "created_at", "id"),   # the call log's pages, newest first
        Index("ix_calls_user_status", "user_id", "status"),              # the live board: calls not yet ended
    )


class CallTranscript(Base):
    __tablename__ = "call_transcripts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    speaker: Mapped[Speaker] = mapped_column(_enum(Speaker))
    text: Mapped[str] = mapped_column(Text)
    offset_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    # The call log's transcript search (ILIKE '%words%') on PostgreSQL; SQLite has no trigram index.
    __table_args__ = (
        Index("ix_call_transcripts_text_trgm", "text", postgresql_using="gin",
              postgresql_ops={"text": "gin_trgm_ops"}).ddl_if(dialect="postgresql"),
    )


class CallEvent(Base):
    __tablename__ = "call_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class TaskEvent(Base):
    """A decision about a task (scheduler, analyzer, lifecycle manager) with its reason."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class DndEntry(Base):
    __tablename__ = "dnd_list"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    phone_number: Mapped[str] = mapped_column(String(20), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("user_id", "phone_number", name="uq_dnd_user_number"),)


class FeedbackRequest(Base):
    __tablename__ = "feedback_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text)
    status: Mapped[FeedbackStatus] = mapped_column(_enum(FeedbackStatus), default=FeedbackStatus.PENDING)
    asked_at: Mapped[datetime] = mapped_column(default=utcnow)
    answered_at: Mapped[datetime | None] = mapped_column()
    timeout_at: Mapped[datetime | None] = mapped_column()


class ChatSession(Base):
    __tablename__ = "chat_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200), default="New task")
    plan: Mapped[dict[str, Any] | None] = mapped_column()  # the latest valid campaign plan
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChatMessage(Base):
    __tablename__ = "chat_messages"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    session_id: Mapped[int] = mapped_column(ForeignKey("chat_sessions.id", ondelete="CASCADE"), index=True)
    role: Mapped[ChatRole] = mapped_column(_enum(ChatRole))
    content: Mapped[str] = mapped_column(Text, default="")
    tool_calls: Mapped[list[Any] | None] = mapped_column()
    tool_call_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsageRecord(Base):
    """What one model request, Realtime response or call's trunk time used, and what it cost when it happened.

    The cost is priced from MODEL_PRICES / TRUNK_PRICE_PER_MINUTE when recorded and stored with the prices used:
    changing the prices later changes new records only, never history. cost_microusd NULL = not priced (the
    model has no price; `unpriced_reason` says which)."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    call_id: Mapped[int | None] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    chat_id: Mapped[int | None] = mapped_column(ForeignKey("chat_sessions.id", ondelete="SET NULL"))
    kind: Mapped[UsageKind] = mapped_column(_enum(UsageKind))
    model: Mapped[str] = mapped_column(String(100))     # the model, or "trunk"
    text_in: Mapped[int] = mapped_column(Integer, default=0)           # uncached input text tokens
    text_cached_in: Mapped[int] = mapped_column(Integer, default=0)
    text_out: Mapped[int] = mapped_column(Integer, default=0)
    audio_in: Mapped[int] = mapped_column(Integer, default=0)          # uncached input audio tokens
    audio_cached_in: Mapped[int] = mapped_column(Integer, default=0)
    audio_out: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[int] = mapped_column(Integer, default=0)           # trunk: answered seconds; whisper: audio
    cost_microusd: Mapped[int | None] = mapped_column(BigInteger)
    price: Mapped[dict[str, Any] | None] = mapped_column()             # {"name": entry, "prices": {...}}
    unpriced_reason: Mapped[str | None] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_usage_records_user_at", "user_id", "at"),)


class Notification(Base):
    """Something a user's open pages should show: lifecycle check-ins, campaign summaries, timeouts."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column()


class WebhookDeliveryStatus(enum.StrEnum):
    PENDING = "pending"        # waiting for its (next) attempt
    DELIVERED = "delivered"    # the endpoint answered 2xx
    GAVE_UP = "gave_up"        # still failing after WEBHOOK_RETRY_HOURS (or the endpoint was disabled)


class WebhookEndpoint(Base):
    """Where a user wants events pushed: a URL, the secret that signs each delivery, the event types wanted."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(200))
    events: Mapped[list[Any]] = mapped_column(default=list)    # event type names, e.g. ["call.ended"]
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """The outbox: one event for one endpoint, written in the transaction of the change it reports, then sent
    (and retried) by the webhook sender, which claims it with a lease so no two senders send it at once."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)   # the idempotency id receivers dedupe on
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[WebhookDeliveryStatus] = mapped_column(_enum(WebhookDeliveryStatus),
                                                          default=WebhookDeliveryStatus.PENDING)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claim: Mapped[str | None] = mapped_column(String(36))
    locked_until: Mapped[datetime | None] = mapped_column()
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column()
    history: Mapped[list[Any]] = mapped_column(default=list)   # the latest attempts: at, code, error, ms

    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)
