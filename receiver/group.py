"""Group commit for webhook deliveries: one writer per process.

The one transaction rule of the webhook path, explained once: deliveries that arrive while a
group is being written wait, and go together in the next group, which is ONE database
transaction (`core.webhook.receive.receive_many`). Inside it every event has its own savepoint,
so an event that fails rolls back alone and is answered on its own merits; nothing is answered
before the commit that holds it. One commit for many events saves what dominates a small
transaction (the commit itself); a crash before the commit loses no answered delivery.

Groups are written in one thread of their own, never on the event loop: a database that
stalls (a lock held by another process, a disk or network that hangs) delays only the
deliveries waiting for it, while the loop goes on reading requests, answering /healthz and
closing slow clients. SQLite takes one writer at a time anyway, and PostgreSQL gains nothing
from more threads here, since groups are written one after the other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from core.webhook.receive import Delivery, Outcome

log = logging.getLogger("receiver")

MAX_GROUP = 64  # deliveries per group commit: bounds the wait of the first one in a group
IDLE_TURNS = 3  # turns of the event loop without a new delivery that end the gathering


class GroupWriter:
    """Group commit: one writer per process; deliveries that arrive while it writes a group
    wait and go together in the next one (core.webhook.receive.receive_many), each answered only
    after the commit that holds it. Alone, a delivery is written at once, by itself.

    Groups are written in the writer's own thread (see the module's docstring); `close()`
    ends it once the server has stopped. `inline=True` writes on the loop instead: only for
    tests of the gathering, whose counting of the loop's turns a thread would make uncertain."""

    def __init__(
        self, write: Callable[[list[Delivery]], list[Outcome]], *, inline: bool = False
    ) -> None:
        self.write = write
        self.inline = inline
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook-writer")
        self.waiting: list[tuple[Delivery, asyncio.Future[Outcome]]] = []
        self.busy = False
        self.task: asyncio.Task[None] | None = None  # referenced, so never collected mid-run

    async def submit(self, delivery: Delivery) -> Outcome:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((delivery, future))
        if not self.busy:
            self.busy = True
            self.task = asyncio.get_running_loop().create_task(self._drain())
        # Shielded: a client that hangs up does not stop its delivery from being written.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self.waiting:
                group, self.waiting = self.waiting[:MAX_GROUP], self.waiting[MAX_GROUP:]
                deliveries = [delivery for delivery, _ in group]
                try:
                    if self.inline:
                        outcomes = self.write(deliveries)
                    else:
                        loop = asyncio.get_running_loop()
                        outcomes = await loop.run_in_executor(self.thread, self.write, deliveries)
                    if len(outcomes) != len(group):
                        raise RuntimeError(f"{len(outcomes)} answers for {len(group)} deliveries")
                except Exception:  # receive_many answers every failure itself; this is a bug
                    log.exception("webhook group writer failed")
                    outcomes = [Outcome(500, "error", "processing_failed")] * len(group)
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    future.set_result(outcome)
                await self._gather()
        finally:
            self.busy = False

    async def _gather(self) -> None:
        """Let the loop read the requests that arrived while a group was written, so that they
        join the next group: a request takes a few turns of the loop to reach `submit`, and
        bigger groups amortise a commit (about 1 ms on SQLite) over more events. Stops when
        the loop turned without bringing a delivery, or the group is full."""
        idle = 0
        while idle < IDLE_TURNS and len(self.waiting) < MAX_GROUP:
            seen = len(self.waiting)
            await asyncio.sleep(0)
            idle = idle + 1 if len(self.waiting) == seen else 0

    def close(self) -> None:
        """Stop the writer's thread after the group it may be writing."""
        self.thread.shutdown(wait=True)
