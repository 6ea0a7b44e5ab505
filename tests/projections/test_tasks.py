"""Stopping a task that swallows its first cancellation, as Python 3.11's
``asyncio.wait_for`` (inside nats-py) does when the reply arrives with it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from projections.tasks import stop_task


async def _swallows_once(ended: asyncio.Event) -> None:
    with contextlib.suppress(asyncio.CancelledError):  # as wait_for does, the result there
        await asyncio.Event().wait()  # never set: only a cancellation ends it
    try:
        await asyncio.Event().wait()  # and then it goes on, as a follower would
    finally:
        ended.set()


async def test_a_lost_cancellation_does_not_hang_the_stop() -> None:
    ended = asyncio.Event()
    task = asyncio.create_task(_swallows_once(ended))
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await stop_task(task)
    assert task.done()
    assert ended.is_set()


async def test_the_stopper_cancelled_meanwhile_still_ends_the_task_then_says_so() -> None:
    ended = asyncio.Event()
    inner = asyncio.create_task(_swallows_once(ended))
    await asyncio.sleep(0)
    outer = asyncio.create_task(stop_task(inner))
    await asyncio.sleep(0)
    outer.cancel()  # the one stopping is itself being stopped
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await outer
    assert inner.done()
    assert ended.is_set()


async def test_a_task_that_will_not_end_is_left_after_the_limit() -> None:
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await released.wait()

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await stop_task(task, give_up_s=1.0)
    assert not task.done()
    released.set()
    async with asyncio.timeout(5):
        await task
