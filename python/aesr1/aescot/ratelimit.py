"""An asyncio token bucket: at most `rate` requests per second on average, bursts up to `burst`.

Hand-written because the few lines needed do not justify a dependency (aiolimiter and friends) and
the bucket must share one clock with the client's Retry-After pause.
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Waits in `acquire` until a token is available; tokens refill continuously at `rate` per second.

    `clock` and `sleep` are injectable so tests can run the bucket on virtual time.
    """

    def __init__(
        self, rate: float, burst: float | None = None, *, clock=time.monotonic, sleep=asyncio.sleep
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 requests per second, got {rate!r}")
        burst = max(1.0, rate) if burst is None else float(burst)
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = burst
        self._updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self) -> None:
        # The lock makes waiters queue in order instead of all waking for the same token.
        async with self._lock:
            self._refill()
            while self._tokens < 1.0:
                await self._sleep((1.0 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1.0
