"""The people a user lets the call AI hand a callee to (transfer_targets). Every function takes the user and
filters on it, as in repo.py; the call AI names a target, and only these rows turn a name into a number."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from db import repo
from db.models import TransferTarget
from db.typed import rows_changed
from opendeep.settings import Settings

MAX_TARGETS_PER_USER = 50


async def list_transfer_targets(session: AsyncSession, user_id: int) -> Sequence[TransferTarget]:
    rows = await session.scalars(select(TransferTarget).where(TransferTarget.user_id == user_id)
                                 .order_by(TransferTarget.name))
    return rows.all()


async def find_transfer_target(session: AsyncSession, user_id: int, name: str) -> TransferTarget | None:
    """The user's target called `name` (case and surrounding spaces ignored), or None."""
    wanted = name.strip().casefold()
    return next((t for t in await list_transfer_targets(session, user_id) if t.name.casefold() == wanted), None)


async def add_transfer_target(session: AsyncSession, user_id: int, name: str,
                              phone_number: str) -> TransferTarget | None:
    """Add a target; None when the user already has one of that name (or has the most allowed)."""
    if await find_transfer_target(session, user_id, name) is not None:
        return None
    count = await session.scalar(select(func.count()).select_from(TransferTarget)
                                 .where(TransferTarget.user_id == user_id))
    if (count or 0) >= MAX_TARGETS_PER_USER:
        return None
    target = TransferTarget(user_id=user_id, name=name.strip(), phone_number=phone_number)
    session.add(target)
    await session.flush()
    return target


async def remove_transfer_target(session: AsyncSession, user_id: int, target_id: int) -> bool:
    result = await session.execute(delete(TransferTarget).where(TransferTarget.id == target_id,
                                                                TransferTarget.user_id == user_id))
    return rows_changed(result) == 1


async def transfer_refusal(session: AsyncSession, settings: Settings, user_id: int, number: str) -> str | None:
    """Why `number` may not be rung for this user's transfer, or None. The rules of outbound calls apply:
    test mode dials only its one number, and no do-not-call list (the user's, or the global one) is crossed."""
    if settings.app_test_mode and number != settings.app_test_mode_redirect_number:
        return "test mode: only APP_TEST_MODE_REDIRECT_NUMBER may be dialed"
    listed_by_user, tenants = (await repo.dnd_checks(session, [(user_id, number)]))[(user_id, number)]
    if listed_by_user or tenants >= settings.global_dnd_tenant_threshold:
        return "the number is on a do-not-call list"
    return None
