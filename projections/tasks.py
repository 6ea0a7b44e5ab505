"""Stopping a task for certain, even when a library drops the cancellation.

On Python 3.11, ``asyncio.wait_for`` returns its result and drops a
cancellation that arrives in the same loop step as that result (fixed in
3.12, where it is built on ``asyncio.timeout``). nats-py waits for every
request that way, so a single ``cancel()`` of a task that follows the ledger
was sometimes lost: the task went on reading forever and whoever awaited it
hung (seen: about one node stop in fifty, right after its start). Cancelling
again until the task has ended is the cure; our own code uses
``asyncio.timeout``, never ``wait_for``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import structlog

log = structlog.get_logger(__name__)

#: How long to wait for a cancelled task before cancelling it again.
RECANCEL_S: Final = 0.1
#: How long to keep trying before saying the task will not end.
GIVE_UP_S: Final = 30.0


async def stop_task(task: asyncio.Task[Any], *, give_up_s: float = GIVE_UP_S) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again while it runs on.

    The caller's own cancellation does not cut this short (the task would be
    left running): it is remembered and raised once the task has ended. A
    task still running after ``give_up_s`` is logged, by name, and left.
    What the task raised is retrieved and dropped: a stop is not a failure.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_s
    interrupted = False
    while not task.done():
        if loop.time() >= deadline:
            log.critical("task_did_not_stop", task=task.get_name(), seconds=give_up_s)
            break
        task.cancel()
        try:
            await asyncio.wait({task}, timeout=RECANCEL_S)
        except asyncio.CancelledError:
            interrupted = True
    if task.done() and not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
    if interrupted:
        raise asyncio.CancelledError
