"""Group commit of feedback rows: concurrent callers share one durable write (used by DecisionLog)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LogUnavailable(RuntimeError):
    """The store did not accept a write that had to be durable (feedback): the caller should answer 503."""


class FeedbackCommitter:
    """Collects rows for `window_s`, then writes them (and all that arrive during the write) as one batch.

    `write(rows)` runs in a thread and raises when the store fails; each caller of `commit` returns once its
    row is written, or gets `LogUnavailable`. `commits` counts the successful writes.
    """

    def __init__(self, write: Callable[[list[dict]], None], window_s: float) -> None:
        self.write, self.window_s = write, window_s
        self.commits = 0
        self._pending: list[tuple[dict, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def commit(self, row: dict) -> None:
        """Return once `row` is durable; raise LogUnavailable when the store failed."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((row, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._loop())
        await future

    async def _loop(self) -> None:
        await asyncio.sleep(self.window_s)
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self.write, [r for r, _ in batch])
                self.commits += 1
                error = None
            except Exception as exc:  # noqa: BLE001
                error = LogUnavailable(
                    f"feedback not recorded: the decision log store failed ({type(exc).__name__}); retry later"
                )
            for _, future in batch:
                if not future.done():
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
