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
# Under load (more than one delivery in flight), how long the next group waits at most to be
# as large as the load: the senders just answered are usually busy ones that send again at
# once (like PostgreSQL's commit_delay, which applies only when other transactions are active).
LOADED_WAIT_S = 0.002


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
        self.wanted = 0  # while gathering under load: the group size that ends the wait
        self.filled: asyncio.Future[None] | None = None  # set once `wanted` are waiting

    async def submit(self, delivery: Delivery) -> Outcome:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((delivery, future))
        filled = self.filled
        if filled is not None and len(self.waiting) >= self.wanted and not filled.done():
            filled.set_result(None)
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
                    in_flight = len(group) + len(self.waiting)  # the load, as this write ends
                    if len(outcomes) != len(group):
                        raise RuntimeError(f"{len(outcomes)} answers for {len(group)} deliveries")
                except Exception:  # receive_many answers every failure itself; this is a bug
                    log.exception("webhook group writer failed")
                    outcomes = [Outcome(500, "error", "processing_failed")] * len(group)
                    in_flight = 0
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    future.set_result(outcome)
                await self._gather(in_flight)
        finally:
            self.busy = False

    async def _gather(self, in_flight: int) -> None:
        """Let the loop read the requests that arrived while a group was written, so that they
        join the next group: a request takes a few turns of the loop to reach `submit`, and
        bigger groups amortise a commit (about 1 ms on SQLite) over more events. Stops when
        the loop turned without bringing a delivery, or the group is full.

        Under load (`in_flight`, the deliveries of the group just written and those that
        arrived meanwhile, is more than one), then waits up to LOADED_WAIT_S for as many:
        without it, the one or two requests that arrived during a write went alone, each paying
        a whole transaction, while the senders just answered were still on their way (at
        saturation two groups in three were single deliveries). A lone delivery is still
        written at once."""
        idle = 0
        while idle < IDLE_TURNS and len(self.waiting) < MAX_GROUP:
            seen = len(self.waiting)
            await asyncio.sleep(0)
            idle = idle + 1 if len(self.waiting) == seen else 0
        wanted = min(in_flight, MAX_GROUP)
        if len(self.waiting) < wanted and in_flight > 1:
            loop = asyncio.get_running_loop()
            self.wanted, self.filled = wanted, loop.create_future()
            timer = loop.call_later(LOADED_WAIT_S, _settle, self.filled)
            try:
                await self.filled
            finally:
                timer.cancel()
                self.filled = None

    def close(self) -> None:
        """Stop the writer's thread after the group it may be writing."""
        self.thread.shutdown(wait=True)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
