"""Preallocated decode state: static KV cache and per-row bookkeeping, all at fixed addresses.

Every tensor a decode step reads or writes lives here, allocated once per shape (rows, KV capacity,
completion width), so a step captured as a CUDA graph replays on fresh data. A step for a bucket of
b rows works on the leading `[:b]` rows (contiguous views of the same buffers); compaction moves the
unfinished rows to the front. Why our own buffers instead of transformers' `StaticCache`: the
bucket views and the row compaction need to reach the tensors, and `StaticCache` advances one
write position per layer call by itself, which we keep as a single tensor shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StateShape:
    """Sizes and types a `DecodeState` is allocated for (a new shape means new buffers and graphs)."""

    rows: int  # batch capacity
    capacity: int  # KV columns: prompt + completion - 1, rounded up
    max_new_tokens: int
    num_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    kv_dtype: torch.dtype
    device: torch.device
    with_seen: bool  # repetition penalty needs the [rows, V] mask of seen tokens

    def fits(self, other: StateShape) -> bool:
        """Whether buffers of this shape can serve a call that needs `other`."""
        same = (self.num_layers, self.kv_heads, self.head_dim, self.vocab_size, self.kv_dtype, self.device)
        theirs = (
            other.num_layers,
            other.kv_heads,
            other.head_dim,
            other.vocab_size,
            other.kv_dtype,
            other.device,
        )
        return (
            same == theirs
            and self.rows >= other.rows
            and self.capacity >= other.capacity
            and self.max_new_tokens == other.max_new_tokens
            and (self.with_seen or not other.with_seen)
        )


class BucketCache:
    """The `cache` a decode-step forward gets: rows `[:b]` of the static KV buffers.

    transformers' attention layers call `cache.update(key, value, layer_idx, ...)` and attend over
    what it returns; here each layer writes its one new column at `write_index` (a 1-element device
    tensor, the same for every row because prompts are left-padded to a common length) and returns
    the whole capacity. Columns not yet written are excluded by the attention mask.
    """

    is_compileable = True

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], write_index: torch.Tensor):
        self.keys, self.values, self.write_index = keys, values, write_index

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys.index_copy_(2, self.write_index, key_states.to(keys.dtype))
        values.index_copy_(2, self.write_index, value_states.to(values.dtype))
        return keys, values

    def __len__(self) -> int:
        return len(self.keys)


class DecodeState:
    """Static buffers of one `StateShape`; see the module docstring.

    Per row r (slot in the batch): `keys/values[l][r]` its KV cache, `kv_valid[r]` which columns it
    attends to (its unpadded prompt, then each decoded column), `input_ids[r]` the token fed next,
    `positions[:, r]` that token's 4 rotary positions, `finished[r]`, `row_map[r]` the output row it
    belongs to (`rows` = a dump row for filler slots), `seen[r]` the tokens seen (penalty only).
    Shared: `write_index` (next KV column), `step_index` (next output column). Outputs: `tokens`
    and `logprobs` [rows + 1, max_new_tokens] (last row: the dump row).
    """

    def __init__(self, shape: StateShape):
        self.shape = shape
        rows, device = shape.rows, shape.device
        kv = (rows, shape.kv_heads, shape.capacity, shape.head_dim)
        # zeros, not empty: masked columns still enter attention as 0 * V, so they must be finite
        self.keys = [torch.zeros(kv, dtype=shape.kv_dtype, device=device) for _ in range(shape.num_layers)]
        self.values = [torch.zeros(kv, dtype=shape.kv_dtype, device=device) for _ in range(shape.num_layers)]
        self.kv_valid = torch.zeros(rows, shape.capacity, dtype=torch.bool, device=device)
        self.input_ids = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(4, rows, 1, dtype=torch.long, device=device)
        self.finished = torch.ones(rows, dtype=torch.bool, device=device)
        self.row_map = torch.full((rows,), rows, dtype=torch.long, device=device)
        self.seen = (
            torch.zeros(rows, shape.vocab_size, dtype=torch.bool, device=device) if shape.with_seen else None
        )
        self.write_index = torch.zeros(1, dtype=torch.long, device=device)
        self.step_index = torch.zeros(1, dtype=torch.long, device=device)
        self.tokens = torch.zeros(rows + 1, shape.max_new_tokens, dtype=torch.long, device=device)
        self.logprobs = torch.zeros(rows + 1, shape.max_new_tokens, dtype=torch.float32, device=device)

    def cache(self, bucket: int) -> BucketCache:
        return BucketCache(
            [k[:bucket] for k in self.keys], [v[:bucket] for v in self.values], self.write_index
        )

    def row_tensors(self) -> list[torch.Tensor]:
        """Every buffer indexed by slot on dim 0 (what compaction permutes), positions excepted."""
        tensors = [*self.keys, *self.values, self.kv_valid, self.input_ids, self.finished, self.row_map]
        if self.seen is not None:
            tensors.append(self.seen)
        return tensors

    @torch.no_grad()
    def load_prompt(
        self,
        prompt_keys: list[torch.Tensor],
        prompt_values: list[torch.Tensor],
        attention_mask: torch.Tensor,
        next_positions: torch.Tensor,
        pad_token_id: int,
        seen: torch.Tensor | None = None,
    ) -> None:
        """Start a call: the prefill's KV [n, H, P, D] per layer into columns [0, P) of rows [:n],
        every other slot a finished filler row."""
        n, prompt_length = attention_mask.shape
        for layer, (k, v) in enumerate(zip(prompt_keys, prompt_values, strict=True)):
            self.keys[layer][:n, :, :prompt_length].copy_(k)
            self.values[layer][:n, :, :prompt_length].copy_(v)
        self.kv_valid.zero_()
        self.kv_valid[:n, :prompt_length].copy_(attention_mask.bool())
        # filler slots attend to one (finite) column so their softmax is defined
        self.kv_valid[n:, 0] = True
        self.positions.zero_()
        self.positions[:, :n, 0].copy_(next_positions)
        self.input_ids.fill_(pad_token_id)
        self.finished.fill_(True)
        self.finished[:n] = False
        self.row_map.fill_(self.shape.rows)
        self.row_map[:n] = torch.arange(n, device=self.row_map.device)
        if self.seen is not None:
            self.seen.zero_()
            if seen is not None:
                self.seen[:n].copy_(seen)
        self.write_index.fill_(prompt_length)
        self.step_index.zero_()
        self.tokens.fill_(pad_token_id)
        self.logprobs.zero_()

    @torch.no_grad()
    def compact(self, keep: torch.Tensor, bucket: int) -> None:
        """Move slots `keep` (ascending) to the front; slots [len(keep), bucket) become filler."""
        count = keep.numel()
        for tensor in self.row_tensors():
            tensor[:count] = tensor[keep]  # advanced indexing copies first: safe in place
        self.positions[:, :count] = self.positions[:, keep]
        self.finished[count:bucket] = True
        self.row_map[count:bucket] = self.shape.rows
