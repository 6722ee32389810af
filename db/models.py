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
DUE_TASK_STATUSES = (TaskStatus.PENDING, TaskStatus.ON_HOLD, TaskStatus.RETRY_SCHEDULED)


class CampaignStatus(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


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
    VOICEMAIL = "voicemail"
    FAILED_AI = "failed_ai"


class Speaker(enum.StrEnum):
    AGENT = "agent"
    CALLEE = "callee"
    SYSTEM = "system"


class FeedbackStatus(enum.StrEnum):
    PENDING = "pending"
    ANSWERED = "answered"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


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
    plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Idempotency key of the confirm that created it: a double click finds this row instead of a second one.
    source_key: Mapped[str | None] = mapped_column(String(64))
    summary_text: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    summarized_at: Mapped[datetime | None] = mapped_column()

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
    __table_args__ = (
        # The status strip on every page: calls in progress (status IN the open ones, per user and in all), and
        # the latest call the AI took / the latest analysis of a user (newest first, stops at the first row).
        Index("ix_calls_status_user", "status", "user_id"),
        Index("ix_calls_user_ended", "user_id", "ended_at"),
        Index("ix_calls_user_analyzed", "user_id", "analyzed_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    attempt_number: Mapped[int] = mapped_column(Integer)
    status: Mapped[CallStatus] = mapped_column(_enum(CallStatus), default=CallStatus.CREATED)
    outcome: Mapped[CallOutcome | None] = mapped_column(_enum(CallOutcome))
    dialed_number: Mapped[str] = mapped_column(String(20))
    channel: Mapped[str | None] = mapped_column(String(128))
    asterisk_uniqueid: Mapped[str | None] = mapped_column(String(64), index=True)   # the ;1 half (ChannelId)
    asterisk_other_uniqueid: Mapped[str | None] = mapped_column(String(64))          # the ;2 half (agi_uniqueid)
    asterisk_linkedid: Mapped[str | None] = mapped_column(String(64))
    ami_action_id: Mapped[str | None] = mapped_column(String(64), unique=True)
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


class CallTranscript(Base):
    __tablename__ = "call_transcripts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    speaker: Mapped[Speaker] = mapped_column(_enum(Speaker))
    text: Mapped[str] = mapped_column(Text)
    offset_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


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
