"""Experts write the AesCoT critiques: an OpenAI-compatible endpoint, a local `transformers` VLM, or the
template writer of the synthetic dataset.

Every expert is told the hidden score through the construction prompt (Appendix B + Table 5) and
returns free text; the pipeline filters it afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from aesr1.aescot.chat_client import ChatClient, EndpointConfig, image_data_url
from aesr1.aescot.construction import chat_content, construction_prompt
from aesr1.data.records import ScoredImage


@dataclass
class Critique:
    """An expert's raw answer: text and why generation stopped ("length" = truncated)."""

    text: str
    finish_reason: str | None = None


@runtime_checkable
class Expert(Protocol):
    """What `build_dataset` needs from an expert."""

    name: str

    def validate(self, items: Sequence[ScoredImage]) -> None:
        """Raise ValueError before any work if the expert cannot handle `items`."""

    async def critique(self, item: ScoredImage) -> Critique:
        """The critique of `item` (which carries its score)."""

    async def aclose(self) -> None:
        """Release connections / models."""


def stable_seed(seed: int, key: str) -> int:
    """A 32-bit seed from (`seed`, `key`) that is identical across processes (unlike `hash`)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:4], "little")


class ChatExpert:
    """Critiques from an OpenAI-compatible chat-completions endpoint; the image goes as a data URL.

    Args:
        endpoint: an `EndpointConfig`, or a `ChatClient` to share with a `ChatJudge`.
        temperature: sampling temperature (None leaves the server default).
        max_tokens: completion cap sent as `max_tokens_field`.
        max_tokens_field: "max_tokens" (vLLM, SGLang, most APIs) or "max_completion_tokens" (OpenAI
            reasoning models).
        with_dimensions: append the Table 5 dimensions to the Appendix B prompt.
        system_prompt: optional system message.
    """

    def __init__(
        self,
        endpoint: EndpointConfig | ChatClient,
        *,
        temperature: float | None = None,
        max_tokens: int | None = 1024,
        max_tokens_field: str = "max_tokens",
        with_dimensions: bool = True,
        system_prompt: str | None = None,
    ) -> None:
        self.client = endpoint if isinstance(endpoint, ChatClient) else ChatClient(endpoint)
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens!r}")
        if max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise ValueError(
                f"max_tokens_field must be 'max_tokens' or 'max_completion_tokens', got {max_tokens_field!r}"
            )
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_tokens_field = max_tokens_field
        self.with_dimensions = with_dimensions
        self.system_prompt = system_prompt
        self.name = f"chat:{self.client.config.model}"

    def validate(self, items: Sequence[ScoredImage]) -> None:
        return None

    def messages(self, item: ScoredImage, image_url: str | None = None) -> list[dict[str, Any]]:
        url = image_url or image_data_url(item.image, self.client.config.max_image_side)
        content = chat_content(construction_prompt(item.score, with_dimensions=self.with_dimensions), url)
        detail = self.client.config.image_detail
        if detail is not None:
            for part in content:
                if part["type"] == "image_url":
                    part["image_url"]["detail"] = detail
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": content})
        return messages

    async def critique(self, item: ScoredImage) -> Critique:
        params: dict[str, Any] = {}
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if self.max_tokens is not None:
            params[self.max_tokens_field] = self.max_tokens
        # Reading and (optionally) resizing the image off the event loop keeps other requests flowing.
        url = await asyncio.to_thread(image_data_url, item.image, self.client.config.max_image_side)
        result = await self.client.complete(self.messages(item, url), **params)
        return Critique(result.text, result.finish_reason)

    async def aclose(self) -> None:
        await self.client.aclose()


class LocalModel:
    """A (model, processor) pair shared by a `TransformersExpert` and a `TransformersJudge`.

    Generation runs in a worker thread (so the event loop keeps writing results) and one request at
    a time: `generate_completions` takes one prompt per batch while every AesCoT prompt carries its
    own score, so requests cannot be batched together.
    """

    def __init__(self, model, processor, *, name: str = "local") -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: str | None = None, device: str | None = None
    ) -> LocalModel:
        from aesr1.modeling.loading import load_model

        model, processor = load_model(path, dtype=dtype)
        if device is not None:
            model = model.to(device)
        model.eval()
        return cls(model, processor, name=str(path))

    def _generate_sync(
        self, image: str, prompt: str, max_new_tokens: int, temperature: float, do_sample: bool, seed: int
    ) -> Critique:
        from aesr1.generation import generate_completions

        with self._lock:
            text = generate_completions(
                self.model,
                self.processor,
                [image],
                prompt=prompt,
                num_samples=1,
                temperature=temperature,
                max_new_tokens=max_new_tokens,
                batch_size=1,
                do_sample=do_sample,
                seed=seed,
            )[0][0]
        # `generate_completions` does not say why it stopped; a completion that uses the whole
        # budget was cut off.
        n_tokens = len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        return Critique(text, "length" if n_tokens >= max_new_tokens else "stop")

    async def generate(
        self, image: str, prompt: str, *, max_new_tokens: int, temperature: float, do_sample: bool, seed: int
    ) -> Critique:
        return await asyncio.to_thread(
            self._generate_sync, image, prompt, max_new_tokens, temperature, do_sample, seed
        )


class TransformersExpert:
    """Critiques from a local vision-language model through `aesr1.generation.generate_completions`.

    Sampling is seeded per item (`seed` and the item's id), so reruns reproduce the same critique.
    """

    def __init__(
        self,
        model: LocalModel,
        *,
        max_new_tokens: int = 1024,
        temperature: float = 0.7,
        do_sample: bool = True,
        seed: int = 0,
        with_dimensions: bool = True,
    ) -> None:
        if not isinstance(model, LocalModel):
            raise TypeError(f"model must be a LocalModel, got {type(model).__name__}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
        self.local = model
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.do_sample = do_sample
        self.seed = seed
        self.with_dimensions = with_dimensions
        self.name = f"transformers:{model.name}"

    def validate(self, items: Sequence[ScoredImage]) -> None:
        return None

    async def critique(self, item: ScoredImage) -> Critique:
        prompt = construction_prompt(item.score, with_dimensions=self.with_dimensions)
        return await self.local.generate(
            item.image,
            prompt,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            do_sample=self.do_sample,
            seed=stable_seed(self.seed, f"{item.source}:{item.id}"),
        )

    async def aclose(self) -> None:
        return None


class TemplateExpert:
    """Critiques of the built-in synthetic dataset, written from the drawing attributes.

    Calls `aesr1.data.synthetic.write_critique` with an rng seeded by (`seed`, item id), so the
    synonyms it picks are reproducible per item and independent of processing order.
    """

    name = "template"

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        self.seed = seed

    def validate(self, items: Sequence[ScoredImage]) -> None:
        from aesr1.data.synthetic import ATTRIBUTE_KEYS

        for item in items:
            missing = set(ATTRIBUTE_KEYS) - set(item.attributes)
            if missing:
                raise ValueError(
                    f"TemplateExpert needs synthetic items with attributes {list(ATTRIBUTE_KEYS)}; "
                    f"item {item.source}:{item.id} lacks {sorted(missing)} (use --expert chat or transformers "
                    "for real datasets)"
                )

    async def critique(self, item: ScoredImage) -> Critique:
        from aesr1.data.synthetic import write_critique

        rng = random.Random(stable_seed(self.seed, f"{item.source}:{item.id}"))
        return Critique(write_critique(item, rng), "stop")

    async def aclose(self) -> None:
        return None
