"""What the running components share: settings, the database, the event hub, the AMI controller, and the
components themselves (for /healthz)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from db.engine import create_engine, session_factory
from opendeep.events import EventHub
from opendeep.settings import Settings

if TYPE_CHECKING:  # imported for type checkers only: the AMI package is optional in `serve --only`
    from ami_controller.actions import CallActions
    from ami_controller.manager import AmiController


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    events: EventHub
    ami: CallActions | AmiController | None = None   # live-call actions; `serve` sets a CallActions in every process
    components: dict[str, Any] = field(default_factory=dict)   # what `serve` runs here, by name (/healthz)

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        engine = create_engine(settings.database_url)
        return cls(settings=settings, engine=engine, sessions=session_factory(engine), events=EventHub())

    async def close(self) -> None:
        await self.engine.dispose()
