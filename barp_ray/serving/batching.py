"""The batched policy forward of a router replica: `@serve.batch` plus a coalescer on one executor thread.

`PolicyForward.forward(text, w_cost, active)` is what a request awaits: the `@serve.batch` method itself,
whose requests go to `ForwardCoalescer`, which calls `RoutingEngine.forward(texts, w_costs)` (MiniLM +
`BarpPolicy.forward`) on the replica's forward thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from barp_ray.serving.config_sections import BatchingConfig

# @serve.batch batches that may be in flight at once: they queue in the ForwardCoalescer and share a forward
MAX_CONCURRENT_BATCHES = 8


class ForwardCoalescer:
    """Runs `fn(texts, w_costs)` on one executor thread and merges every batch waiting behind a running forward.

    `@serve.batch` forms the next batch as soon as its wait window closes, even while the previous forward
    still runs, so under load it hands over several small batches in a row. They all wait here, and the
    next forward takes all of them (up to `max_items` prompts): one forward pass per free moment of the
    thread, with no extra waiting when the replica is idle.
    """

    def __init__(self, fn, executor, max_items: int, on_forward=None, on_isolate=None) -> None:
        self.fn, self.executor, self.max_items, self.on_forward = fn, executor, max_items, on_forward
        self.on_isolate = on_isolate  # called when a failed merged pass is retried caller by caller
        self.pending: list[tuple[list[str], list[float], asyncio.Future, Any]] = []
        self.task: asyncio.Task | None = None

    async def run(self, texts: list[str], w_costs: list[float], fn=None) -> tuple[np.ndarray, int]:
        """(probabilities of these prompts, size of the forward pass they were part of).

        `fn` (default: the coalescer's) is the forward to run them with; only prompts with the same `fn` share
        a pass, so during a policy swap each request is still answered by the policy it was decided with.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((list(texts), list(w_costs), future, fn if fn is not None else self.fn))
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            take, n, fn = [], 0, self.pending[0][3]
            while (
                self.pending
                and self.pending[0][3] == fn  # one policy per pass (bound methods: == by object)
                and (not take or n + len(self.pending[0][0]) <= self.max_items)
            ):
                item = self.pending.pop(0)
                if item[2].done():  # cancelled while waiting (client went away)
                    continue
                take.append(item)
                n += len(item[0])
            if not take:
                continue
            texts = [t for item in take for t in item[0]]
            w_costs = [w for item in take for w in item[1]]
            try:
                probs = await loop.run_in_executor(self.executor, fn, texts, w_costs)
            except Exception as exc:
                if len(take) == 1:  # nothing to isolate: the caller gets the error, none hangs
                    if not take[0][2].done():
                        take[0][2].set_exception(exc)
                    continue
                # fault isolation: a pass of several callers failed; run each caller alone, so only the
                # faulty one gets an error and the others their probabilities
                if self.on_isolate is not None:
                    self.on_isolate()
                for item_texts, item_w, future, _ in take:
                    try:
                        part = await loop.run_in_executor(self.executor, fn, item_texts, item_w)
                    except Exception as item_exc:  # noqa: BLE001 - handed to this caller only
                        if not future.done():
                            future.set_exception(item_exc)
                        continue
                    if self.on_forward is not None:
                        self.on_forward(len(item_texts))
                    if not future.done():
                        future.set_result((part, len(item_texts)))
                continue
            if self.on_forward is not None:
                self.on_forward(n)
            start = 0
            for item_texts, _, future, _ in take:
                if not future.done():
                    future.set_result((probs[start : start + len(item_texts)], n))
                start += len(item_texts)


class PolicyForward:
    """`forward(text, w_cost, active) -> (probabilities, forward batch size) | its own exception`.

    `forward` is the `@serve.batch` method itself; each request of a batch is one caller of the replica's
    `ForwardCoalescer`, which merges callers into one pass on the forward thread and, when a merged pass
    raises, retries its callers one by one (fault isolation lives there, once). `active` is the request's
    `ActivePolicy` (its engine runs the pass). One instance per replica: the batch queue belongs to it.
    Batching off = batches of one; `coalesce` off = passes no larger than one `@serve.batch` batch.
    """

    def __init__(
        self,
        batching: BatchingConfig,
        on_batch: Callable[[int], None],
        torch_threads: int | None = None,
        on_isolate: Callable[[], None] | None = None,
    ) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="barp-forward")
        self.closed = False
        if torch_threads:
            import torch

            self.executor.submit(torch.set_num_threads, torch_threads).result()
        batch_size = batching.max_batch_size if batching.enabled else 1
        self.coalescer = ForwardCoalescer(
            None,
            self.executor,
            batching.max_forward_size if batching.coalesce else batch_size,
            on_forward=on_batch,
            on_isolate=on_isolate,
        )
        self.forward.set_max_batch_size(batch_size)
        self.forward.set_batch_wait_timeout_s(batching.batch_wait_timeout_s if batching.enabled else 0.0)

    def close(self) -> None:
        """Stop the forward thread (after the forwards queued on it)."""
        self.closed = True
        self.executor.shutdown(wait=False)

    async def warm_up(self, engine: Any, text: str = "warm up the new policy") -> None:
        """One forward of `engine` on the forward thread (it also waits for the forwards queued before it)."""
        await asyncio.get_running_loop().run_in_executor(self.executor, engine.forward, [text], [0.5])

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002, max_concurrent_batches=MAX_CONCURRENT_BATCHES)
    async def forward(
        self, texts: list[str], w_costs: list[float], actives: list[Any]
    ) -> list[tuple[np.ndarray, int] | BaseException]:
        """Per request: (probabilities, size of its forward pass), or the exception of that request alone
        (the caller raises it). A batch formed during a policy swap runs each request on its own policy."""
        results = await asyncio.gather(
            *(
                self.coalescer.run([text], [w], active.engine.forward)
                for text, w, active in zip(texts, w_costs, actives, strict=True)
            ),
            return_exceptions=True,
        )
        return [r if isinstance(r, BaseException) else (r[0][0], r[1]) for r in results]
