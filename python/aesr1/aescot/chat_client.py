"""Async client for OpenAI-compatible chat-completions endpoints (OpenAI, vLLM, SGLang, ...).

Built on `httpx` rather than the `openai` SDK because the pipeline needs explicit control the SDK
hides or does differently: one pause shared by all in-flight requests when a 429 says Retry-After,
a token-bucket rate limit, equal-jitter backoff with a cap, and per-status accounting for the report.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import mimetypes
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from aesr1.aescot.ratelimit import TokenBucket

#: Statuses worth retrying: request timeout, conflict, rate limit, and every server error.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
#: Statuses that mean the endpoint or credentials are wrong: retrying or moving on cannot help.
FATAL_STATUSES = frozenset({401, 403, 404})


@dataclass
class EndpointConfig:
    """Where and how to call a chat-completions endpoint.

    Attributes:
        base_url: API root; requests go to ``{base_url}/chat/completions`` (e.g. ``http://host:8000/v1``
            for vLLM or SGLang).
        model: model name sent with every request (GPT-4.1 in the paper, Appendix E.2).
        api_key_env: environment variable holding the API key; when unset or empty, no Authorization
            header is sent (local servers usually need none).
        timeout_s: per-request timeout in seconds (connect, read and write).
        max_retries: retries after the first attempt on timeouts, connection errors, 408/409/429 and 5xx.
        backoff_initial_s: first backoff; attempt n waits ``min(backoff_max_s, initial * 2**n)`` scaled by
            a uniform jitter in [0.5, 1].
        backoff_max_s: cap on one backoff.
        max_retry_after_s: cap on how long a server's Retry-After may pause the client.
        requests_per_minute: token-bucket rate limit on request starts (None = unlimited).
        max_concurrency: requests in flight at once on this client.
        image_detail: OpenAI ``detail`` of image parts ("low", "high", "auto"); None omits it.
        max_image_side: downscale images whose longer side exceeds this (re-encoded as JPEG);
            None sends the file's bytes as they are.
        extra_body: extra JSON fields merged into every request (e.g. ``{"top_k": 20}`` for vLLM).
    """

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4.1"
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 300.0
    requests_per_minute: float | None = None
    max_concurrency: int = 16
    image_detail: str | None = None
    max_image_side: int | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s!r}")
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        if self.backoff_initial_s < 0 or self.backoff_max_s < 0 or self.max_retry_after_s < 0:
            raise ValueError("backoff_initial_s, backoff_max_s and max_retry_after_s must be >= 0")
        if self.requests_per_minute is not None and not self.requests_per_minute > 0:
            raise ValueError(f"requests_per_minute must be > 0 or None, got {self.requests_per_minute!r}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency!r}")
        if self.image_detail not in (None, "low", "high", "auto"):
            raise ValueError(f"image_detail must be None, 'low', 'high' or 'auto', got {self.image_detail!r}")
        if self.max_image_side is not None and self.max_image_side < 16:
            raise ValueError(f"max_image_side must be >= 16 or None, got {self.max_image_side!r}")

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None


class ChatError(RuntimeError):
    """A request that failed for good (after retries, or with a status retrying cannot fix)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class ChatFatalError(ChatError):
    """The endpoint, model or credentials are wrong (401/403/404): the whole run should stop."""


@dataclass
class ChatResult:
    """One completion: its text, the server's finish reason, token usage and attempts it took."""

    text: str
    finish_reason: str | None
    usage: dict[str, Any]
    attempts: int


def image_data_url(path: str | Path, max_side: int | None = None) -> str:
    """The image as a base64 ``data:`` URL, downscaled (JPEG) when its longer side exceeds `max_side`."""
    path = Path(path)
    data = path.read_bytes()
    mime = mimetypes.guess_type(path.name)[0]
    needs_pil = max_side is not None or mime is None or not mime.startswith("image/")
    if needs_pil:
        from PIL import Image

        with Image.open(BytesIO(data)) as image:
            if max_side is not None and max(image.size) > max_side:
                image = image.convert("RGB")
                image.thumbnail((max_side, max_side))
                buffer = BytesIO()
                image.save(buffer, format="JPEG", quality=90)
                data, mime = buffer.getvalue(), "image/jpeg"
            elif mime is None or not mime.startswith("image/"):
                mime = Image.MIME.get(image.format or "", "image/png")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), if given."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _message_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    raise ValueError(f"unexpected message content of type {type(content).__name__}")


class ChatClient:
    """Sends chat-completions requests with a concurrency bound, a rate limit and retries.

    Retries (up to `max_retries`) cover timeouts, connection errors, 408/409/429, 5xx and malformed
    200 bodies. A 429 or 503 with Retry-After pauses *every* request of this client until then, so
    concurrent workers do not hammer a server that asked for quiet. 401/403/404 raise
    `ChatFatalError`; other 4xx raise `ChatError` for that request only.
    """

    def __init__(self, config: EndpointConfig, *, rng: random.Random | None = None) -> None:
        if not isinstance(config, EndpointConfig):
            raise TypeError(f"config must be an EndpointConfig, got {type(config).__name__}")
        self.config = config
        self.stats: Counter[str] = Counter()
        self._rng = rng or random.Random()
        self._http = None
        self._loop = None
        self._semaphore: asyncio.Semaphore | None = None
        self._bucket: TokenBucket | None = None
        self._paused_until = 0.0

    def _ensure_started(self) -> None:
        import httpx

        loop = asyncio.get_running_loop()
        if self._http is not None and self._loop is loop:
            return
        # A new event loop (a second `build_dataset` call) needs fresh loop-bound objects.
        self._loop = loop
        headers = {"Content-Type": "application/json"}
        key = self.config.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.AsyncClient(
            base_url=self.config.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(self.config.timeout_s),
            limits=httpx.Limits(max_connections=self.config.max_concurrency),
        )
        self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
        rpm = self.config.requests_per_minute
        self._bucket = TokenBucket(rpm / 60.0, burst=max(1.0, min(rpm / 60.0, 10.0))) if rpm else None

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    def _backoff(self, attempt: int) -> float:
        cap = min(self.config.backoff_max_s, self.config.backoff_initial_s * (2.0**attempt))
        return cap * self._rng.uniform(0.5, 1.0)

    async def _wait_for_pause(self) -> None:
        while (delay := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)

    async def complete(self, messages: list[dict[str, Any]], **params: Any) -> ChatResult:
        """One chat completion for `messages`; `params` (temperature, max_tokens, ...) go in the body."""
        import httpx

        self._ensure_started()
        body = {"model": self.config.model, "messages": messages, **self.config.extra_body, **params}
        last_error = "no attempt made"
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
            await self._wait_for_pause()
            if self._bucket is not None:
                await self._bucket.acquire()
            retry_after = None
            async with self._semaphore:
                self.stats["requests"] += 1
                try:
                    response = await self._http.post("chat/completions", json=body)
                except httpx.TimeoutException as error:
                    self.stats["timeouts"] += 1
                    last_error = f"timeout after {self.config.timeout_s}s ({type(error).__name__})"
                    response = None
                except httpx.TransportError as error:
                    self.stats["connection_errors"] += 1
                    last_error = f"connection error: {type(error).__name__}: {error}"
                    response = None
            if response is not None:
                status = response.status_code
                self.stats[f"status_{status}"] += 1
                if status == 200:
                    try:
                        result = self._parse(response.json(), attempt + 1)
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
                        self.stats["malformed_responses"] += 1
                        last_error = f"malformed response body: {error}"
                    else:
                        for key in ("prompt_tokens", "completion_tokens"):
                            value = result.usage.get(key)
                            if isinstance(value, int):
                                self.stats[key] += value
                        return result
                elif status in FATAL_STATUSES:
                    hint = f" (is ${self.config.api_key_env} set?)" if status in (401, 403) else ""
                    raise ChatFatalError(
                        f"{self.config.base_url} answered {status} for model {self.config.model!r}{hint}: "
                        f"{response.text[:300]}",
                        status=status,
                    )
                elif status in RETRYABLE_STATUSES or status >= 500:
                    last_error = f"HTTP {status}: {response.text[:200]}"
                    retry_after = parse_retry_after(response.headers)
                else:
                    raise ChatError(f"HTTP {status}: {response.text[:300]}", status=status)
            if attempt == self.config.max_retries:
                break
            if retry_after is not None:
                delay = min(retry_after, self.config.max_retry_after_s)
                self._paused_until = max(self._paused_until, time.monotonic() + delay)
            else:
                await asyncio.sleep(self._backoff(attempt))
        self.stats["failed_requests"] += 1
        raise ChatError(f"gave up after {self.config.max_retries + 1} attempts: {last_error}", retryable=True)

    @staticmethod
    def _parse(data: dict[str, Any], attempts: int) -> ChatResult:
        choice = data["choices"][0]
        message = choice["message"]
        text = _message_text(message.get("content"))
        finish_reason = choice.get("finish_reason")
        if not text and message.get("refusal"):
            finish_reason = "refusal"
        return ChatResult(
            text=text, finish_reason=finish_reason, usage=data.get("usage") or {}, attempts=attempts
        )
