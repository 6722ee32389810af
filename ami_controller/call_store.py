"""The database side of what AMI tells us about calls: the `calls` rows and `call_events` of one Asterisk
server's calls, written as ami_controller/call_events.py decided.

Queries here name calls by id (from the Uniqueids we assigned, or our own ActionID) rather than by user: AMI
events carry no tenant, and each row's own user_id is what its events and live updates are recorded under.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ami_controller.call_events import call_uniqueids
from ami_controller.outcomes import finish_call
from db import repo
from db.models import Call, CallOutcome, CallStatus
from db.typed import rows_changed
from db.types import utcnow
from opendeep.asterisk_servers import AsteriskServer
from opendeep.settings import Settings

if TYPE_CHECKING:
    from opendeep.events import EventHub

log = logging.getLogger(__name__)

# A call progresses one way only; an event that arrives late never moves it back.
_STATUS_ORDER = [CallStatus.CREATED, CallStatus.ORIGINATING, CallStatus.RINGING, CallStatus.ANSWERED,
                 CallStatus.ENDED]
LIVE_CALL_STATUSES = (CallStatus.ORIGINATING, CallStatus.RINGING, CallStatus.ANSWERED)


class CallStore:
    """Reads and writes the calls of one Asterisk server for its AMI controller."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession], events: EventHub | None,
                 server: AsteriskServer) -> None:
        self.settings = settings
        self.sessions = sessions
        self.events = events
        self.server = server

    def carries_call(self) -> ColumnElement[bool]:
        """SQL condition: the call is on this store's server (NULL, from before servers had names: the first
        server)."""
        if self.server.name == self.settings.asterisk_servers[0].name:
            return or_(Call.asterisk_server == self.server.name, Call.asterisk_server.is_(None))
        return Call.asterisk_server == self.server.name

    async def call_for_originate(self, action_id: str) -> int | None:
        """The call our Originate with this ActionID placed; None for another AMI client's Originate."""
        async with self.sessions() as session:
            # tenant-safe: Asterisk's own event, keyed by the ActionID we gave our Originate; no tenant input
            return await session.scalar(select(Call.id).where(Call.ami_action_id == action_id))

    async def set_channel(self, call_id: int, channel: str) -> None:
        """Remember the call's ;1 channel (the first one seen stays)."""
        async with self.sessions() as session:
            # tenant-safe: the call id comes from the Uniqueid our Originate pre-assigned, not from a tenant
            await session.execute(update(Call).where(Call.id == call_id, Call.channel.is_(None))
                                  .values(channel=channel[:128]))
            await session.commit()

    async def advance(self, call_id: int, status: CallStatus, event_type: str | None,
                      payload: dict[str, Any]) -> None:
        """Move a call forward to `status` (never backwards); record the event either way."""
        earlier = _STATUS_ORDER[: _STATUS_ORDER.index(status)]
        async with self.sessions() as session:
            call = await session.get(Call, call_id)
            if call is None:
                return
            values: dict[str, Any] = {"status": status}
            if status is CallStatus.ANSWERED and call.answered_at is None:
                values["answered_at"] = utcnow()
            # tenant-safe: the call id comes from the Uniqueid our Originate pre-assigned, not from a tenant
            result = await session.execute(
                update(Call).where(Call.id == call_id, Call.status.in_(earlier)).values(**values))
            if event_type:
                await repo.record_call_event(session, call.user_id, call_id, event_type, payload)
            await session.commit()
            if rows_changed(result) == 1 and self.events is not None:
                self.events.publish(call.user_id, "call.updated", {"call_id": call_id, "task_id": call.task_id,
                                                                   "status": status.value, "outcome": None})

    async def record(self, call_id: int, event_type: str, payload: dict[str, Any]) -> None:
        """Record an event on the call."""
        async with self.sessions() as session:
            call = await session.get(Call, call_id)
            if call is None:
                return
            await repo.record_call_event(session, call.user_id, call_id, event_type, payload)
            await session.commit()

    async def finish(self, call_id: int, outcome: CallOutcome, source: str, *, answered_wins: bool = False,
                     **details: Any) -> bool:
        """End the call (outcomes.finish_call: its task moves on by rule). False if it was already over."""
        async with self.sessions() as session:
            call = await session.get(Call, call_id)
            if call is None:
                return False
            if answered_wins and call.answered_at is not None:
                # Answered (OriginateResponse Success / DialEnd ANSWER) then hung up: a normal end, whatever
                # the cause code says.
                outcome = CallOutcome.ANSWERED
            done = await finish_call(session, self.settings, user_id=call.user_id, call_id=call_id,
                                     outcome=outcome, source=source, events=self.events, **details)
            await session.commit()
        if done:
            log.info("call %s finished from AMI (%s): %s", call_id, source, outcome.value)
        return done

    async def finish_calls_not_in(self, live_ids: set[str]) -> None:
        """The re-sync after a (re)connect: each call of this server still in flight in the database whose
        channels are not among `live_ids` (the Uniqueids and Linkedids Asterisk has now) ended while we were
        away; it is finished now (answered if it had been answered, else failed). Nothing is re-sent."""
        async with self.sessions() as session:
            # Only this server's calls: another Asterisk's calls are not in this one's channel list.
            # tenant-safe: the re-sync covers every tenant's calls on this server; each is settled under its own user
            calls = (await session.scalars(select(Call).where(Call.status.in_(LIVE_CALL_STATUSES),
                                                              self.carries_call()))).all()
            for call in calls:
                ids = set(call_uniqueids(call.id))
                if call.asterisk_uniqueid:   # a callback's inbound channel (fastagi_server/callbacks.py)
                    ids.add(call.asterisk_uniqueid)
                if ids & live_ids:
                    log.info("re-sync: call %s is still up in Asterisk", call.id)
                    continue
                outcome = CallOutcome.ANSWERED if call.answered_at is not None else CallOutcome.FAILED
                await repo.record_call_event(session, call.user_id, call.id, "ami.resync",
                                             {"found_in_asterisk": False, "outcome": outcome.value})
                await finish_call(session, self.settings, user_id=call.user_id, call_id=call.id, outcome=outcome,
                                  source="ami.resync", events=self.events)
                log.warning("re-sync: call %s was no longer in Asterisk; finished as %s", call.id, outcome.value)
            await session.commit()
