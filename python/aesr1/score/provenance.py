"""What a score was computed with: the model's revision and the prompt's hash, written beside every
score so two numbers are only compared when they came from the same weights and prompt."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Bytes read from each weights file, spread over it (see `model_revision`).
_SAMPLE_BYTES = 1 << 20
_SAMPLES_PER_FILE = 16


def _file_digest(path: Path, digest) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}/{size}/".encode())
    with path.open("rb") as handle:
        if size <= _SAMPLE_BYTES * _SAMPLES_PER_FILE:
            digest.update(handle.read())
            return
        step = (size - _SAMPLE_BYTES) // (_SAMPLES_PER_FILE - 1)
        for index in range(_SAMPLES_PER_FILE):
            handle.seek(index * step)
            digest.update(handle.read(_SAMPLE_BYTES))


def model_revision(path: str | os.PathLike | None) -> str | None:
    """A 16-hex-digit revision of a local model directory, None for an in-memory model.

    It hashes config.json, the weights index when there is one, and each weights file's name, size
    and 16 MiB of its bytes spread evenly over it (all of a file up to that size). Hashing every
    byte of a 15 GB checkpoint would take longer than scoring a few images; two checkpoints of the
    same architecture differ in practically every MiB of their weights, so the sampled bytes tell
    them apart.
    """
    if path is None:
        return None
    folder = Path(path)
    digest = hashlib.sha256()
    # an adapter directory (peft) has adapter_config.json, which names its base, instead of config.json
    for name in (
        "config.json",
        "adapter_config.json",
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    ):
        if (folder / name).is_file():
            digest.update(f"{name}/".encode())
            digest.update((folder / name).read_bytes())
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    for file in weights:
        _file_digest(file, digest)
    return digest.hexdigest()[:16]


def prompt_sha256(prompt: str, system_prompt: str | None = None) -> str:
    """First 16 hex digits of the SHA-256 of the prompt (and the system prompt when there is one)."""
    text = prompt if system_prompt is None else f"{system_prompt}\n\n{prompt}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


__all__ = ["model_revision", "prompt_sha256"]
