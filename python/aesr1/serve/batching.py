"""Dynamic batching: requests queue up and one worker thread, the only one that touches the model,
scores them in batches.

The worker takes the oldest request, waits up to `max_wait_s` for more to arrive, and scores every
image it gathered (up to `max_batch_size`, never splitting a request between batches) in one
`Scorer.score_batch` call. The Scorer is batch-invariant (greedy and expected modes decode each image
on its own; sample mode seeds each image from its pixels), so an image gets the result it would get
alone.

Requests are `concurrent.futures.Future`s, so the asyncio handlers await them with
`asyncio.wrap_future` and a timeout; a request whose handler gave up before its batch started is
dropped from the queue.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue has no room for a request; `retry_after` estimates in seconds when it will."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The batcher is closing and takes no new requests."""


@dataclass(eq=False)
class Job:
    """One request: its images (RGB PIL images), their names, and the future of their results."""

    images: Sequence[Any]
    names: Sequence[str]
    future: Future = field(default_factory=Future)

    @property
    def size(self) -> int:
        return len(self.images)


#: Called after each model call with its number of images and its duration in seconds.
BatchListener = Callable[[int, float], None]


class Batcher:
    """Queues scoring jobs and runs them in batches on one worker thread.

    Args:
        scorer: an `aesr1.score.Scorer` (anything with its `score_batch(images, names)` contract).
        max_batch_size: images per model call; a larger request is scored alone, in calls of this
            many images.
        max_wait_s: how long the oldest queued request waits for others before its batch runs.
        max_queue: images that may wait; `submit` raises `QueueFull` past it.
        on_batch: a `BatchListener` (metrics).
    """

    def __init__(
        self,
        scorer: Any,
        *,
        max_batch_size: int = 8,
        max_wait_s: float = 0.01,
        max_queue: int = 64,
        on_batch: BatchListener | None = None,
    ):
        self.scorer = scorer
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        self.on_batch = on_batch
        self._queue: deque[Job] = deque()
        self._queued_images = 0
        self._lock = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        # Seconds per image, smoothed: the Retry-After estimate. Starts at a guess that a first
        # model call quickly replaces.
        self._seconds_per_image = 0.5

    @property
    def queue_depth(self) -> int:
        """Images waiting for the model (not counting the batch being scored)."""
        return self._queued_images

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive (it stops after `close` has drained the queue)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def closing(self) -> bool:
        """Whether `close` was called: no new jobs are taken."""
        return self._closing

    def start(self) -> None:
        """Start the worker thread (once)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._work, name="aesr1-serve-batcher", daemon=True)
            self._thread.start()

    def submit(self, images: Sequence[Any], names: Sequence[str]) -> Future:
        """Queue `images` (with their `names`) and return the future of their `ScoreResult`s, in
        order. Raises `QueueFull` or `ShuttingDown` instead of queueing."""
        if len(images) != len(names):
            raise ValueError(f"{len(images)} images but {len(names)} names")
        job = Job(list(images), list(names))
        with self._lock:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            if self._queued_images + job.size > self.max_queue:
                raise QueueFull(
                    f"the queue is full ({self._queued_images} of {self.max_queue} images waiting)",
                    self._retry_after(),
                )
            self._queue.append(job)
            self._queued_images += job.size
            self._lock.notify_all()
        job.future.add_done_callback(lambda future: self._forget(job) if future.cancelled() else None)
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Take no more jobs, score those already queued, and stop the worker (waiting up to
        `timeout` seconds for it)."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _retry_after(self) -> int:
        batches = math.ceil(max(1, self._queued_images) / self.max_batch_size)
        return max(1, math.ceil(batches * self.max_batch_size * self._seconds_per_image))

    def _forget(self, job: Job) -> None:
        """Drop a cancelled job (its request timed out) so that it frees its room in the queue."""
        with self._lock:
            try:
                self._queue.remove(job)
            except ValueError:  # the worker already took it
                return
            self._queued_images -= job.size

    def _take(self) -> Job:
        job = self._queue.popleft()
        self._queued_images -= job.size
        return job

    def _gather(self) -> list[Job] | None:
        """The next batch, waiting for its first job and then up to `max_wait_s` for more; None
        once closing with nothing left."""
        with self._lock:
            while not self._queue:
                if self._closing:
                    return None
                self._lock.wait()
            batch = [self._take()]
            size = batch[0].size
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch_size:
                if self._queue:
                    if size + self._queue[0].size > self.max_batch_size:
                        break  # requests run in arrival order: the next one starts the next batch
                    batch.append(self._take())
                    size += batch[-1].size
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    break
                self._lock.wait(remaining)
            return batch

    def _work(self) -> None:
        while (batch := self._gather()) is not None:
            # A job whose request gave up while it waited is skipped; the others can no longer be
            # cancelled from here on.
            jobs = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if jobs:
                self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        images = [image for job in jobs for image in job.images]
        names = [name for job in jobs for name in job.names]
        results = []
        try:
            # Only a request larger than max_batch_size makes more than one model call.
            for start in range(0, len(images), self.max_batch_size):
                stop = start + self.max_batch_size
                began = time.perf_counter()
                results += self.scorer.score_batch(images[start:stop], names[start:stop])
                self._observe(len(images[start:stop]), time.perf_counter() - began)
            if len(results) != len(images):
                raise RuntimeError(f"the scorer returned {len(results)} results for {len(images)} images")
        except Exception as error:  # the worker outlives any one batch
            for job in jobs:
                job.future.set_exception(error)
            return
        position = 0
        for job in jobs:
            job.future.set_result(results[position : position + job.size])
            position += job.size

    def _observe(self, size: int, seconds: float) -> None:
        self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * seconds / size
        if self.on_batch is not None:
            try:
                self.on_batch(size, seconds)
            except Exception:  # a metrics failure must not stop the worker
                logger.exception("batch listener failed")


__all__ = ["BatchListener", "Batcher", "Job", "QueueFull", "ShuttingDown"]
