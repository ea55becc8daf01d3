"""The running batch of the embedded engine: one left-padded KV cache for every active sequence.

Row r of the cache holds sequence r's keys and values right-aligned: column j is real where `attention_mask[r, j]`
is 1 and padding (zeros, never attended to) where it is 0. All rows share one length T, so a decode step feeds
one token per row with `attention_mask` [B, T + 1] and per-row `position_ids` (the row's count of real tokens),
exactly as HF `generate` does for a left-padded batch.

- join: a sequence prefilled alone (its own cache, length L) is merged in by left-padding whichever side is
  shorter to max(T, L) and concatenating rows;
- leave: rows are selected away, then leading columns that are padding in every remaining row are cut, so T
  follows the longest sequence still running.

The batch's cache is a transformers `DynamicCache` whose layers are `GrowingLayer`s (a `DynamicLayer` that writes
new columns in place into a buffer with spare room, instead of concatenating); the code relies on 5.24's layer
attributes `keys` / `values` (tensors [batch, kv_heads, seq, head_dim]) and `lazy_initialization`. A step only
writes beyond the columns a `snapshot()` covers, which is what lets `restore()` undo a step that failed half-way
(out of memory in a late layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

KV = list[tuple[torch.Tensor, torch.Tensor]]


def cache_tensors(cache: DynamicCache) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


#: Columns a growing layer reserves beyond what it holds: one buffer reallocation per this many decode steps.
SPARE_COLUMNS = 128


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys / values are views of buffers with spare columns.

    `DynamicLayer.update` concatenates, copying the whole batch's cache at every decode step (on an 8B model at
    32 sequences x 1,000 tokens, 4 GB per step beside 16 GB of weights); here a step writes its new column in
    place and reallocates only every `SPARE_COLUMNS` steps. Writes land only beyond the current length, so a
    view taken before a step (`PaddedBatch.snapshot`) reads the same values after it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def adopt(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Hold these tensors as they are (no copy); the next update moves them into a buffer with room."""
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values
        self.key_buffer, self.value_buffer = keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.key_buffer = self.value_buffer = None
        length = self.get_seq_length()
        needed = length + key_states.shape[-2]
        if self.key_buffer is None or self.value_buffer is None or self.key_buffer.shape[-2] < needed:
            self.key_buffer = self._grown(self.keys, length, needed, key_states)
            self.value_buffer = self._grown(self.values, length, needed, value_states)
        self.key_buffer[:, :, length:needed] = key_states
        self.value_buffer[:, :, length:needed] = value_states
        self.keys = self.key_buffer[:, :, :needed]
        self.values = self.value_buffer[:, :, :needed]
        return self.keys, self.values

    @staticmethod
    def _grown(old: torch.Tensor | None, length: int, needed: int, like: torch.Tensor) -> torch.Tensor:
        batch, heads, _, head_dim = like.shape
        buffer = like.new_empty((batch, heads, needed + SPARE_COLUMNS, head_dim))
        if length and old is not None:
            buffer[:, :, :length] = old[:, :, :length]
        return buffer


def cache_from_tensors(config: Any, tensors: KV) -> DynamicCache:
    """A DynamicCache of `GrowingLayer`s holding `tensors` as they are (no copy)."""
    cache = DynamicCache(config=config)
    layers = []
    for keys, values in tensors:
        layer = GrowingLayer()
        layer.adopt(keys, values)
        layers.append(layer)
    cache.layers = layers
    return cache


def _left_pad(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """Pad dim -2 (sequence) of a [B, H, S, D] tensor with `columns` zero columns at the front."""
    return F.pad(tensor, (0, 0, columns, 0)) if columns else tensor


@dataclass
class Snapshot:
    tensors: KV
    attention_mask: torch.Tensor


class PaddedBatch:
    """Rows of a left-padded KV cache plus their attention mask. Row order is the caller's list order."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.cache: DynamicCache | None = None
        self.attention_mask: torch.Tensor | None = None  # long [B, T]

    @property
    def rows(self) -> int:
        return 0 if self.attention_mask is None else int(self.attention_mask.shape[0])

    @property
    def length(self) -> int:
        return 0 if self.attention_mask is None else int(self.attention_mask.shape[1])

    def join(self, others: list[PaddedBatch]) -> None:
        """Append the rows of other batches (prefilled sequences, left-padded among themselves), in order."""
        parts = [b for b in [self, *others] if b.cache is not None and b.attention_mask is not None]
        if len(parts) <= 1 and (not parts or parts[0] is self):
            return
        tensors = [cache_tensors(b.cache) for b in parts]  # type: ignore[arg-type]
        masks: list[torch.Tensor] = [b.attention_mask for b in parts]  # type: ignore[misc]
        width = max(m.shape[1] for m in masks)
        merged: KV = []
        for layer in range(len(tensors[0])):
            keys = [_left_pad(t[layer][0], width - t[layer][0].shape[-2]) for t in tensors]
            values = [_left_pad(t[layer][1], width - t[layer][1].shape[-2]) for t in tensors]
            merged.append((torch.cat(keys, dim=0), torch.cat(values, dim=0)))
        self.attention_mask = torch.cat([F.pad(m, (width - m.shape[1], 0)) for m in masks], dim=0)
        self.cache = cache_from_tensors(self.config, merged)

    @classmethod
    def of(cls, config: Any, cache: DynamicCache, attention_mask: torch.Tensor) -> PaddedBatch:
        """A batch holding `cache` (rows left-padded as `attention_mask` says), e.g. a prefill's."""
        batch = cls(config)
        batch.cache, batch.attention_mask = cache, attention_mask
        return batch

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order); cut columns that became padding in every row."""
        if self.cache is None or self.attention_mask is None:
            return
        if not rows:
            self.clear()
            return
        if rows == list(range(self.rows)):
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.attention_mask.device)
        mask = self.attention_mask.index_select(0, index)
        real_columns = mask.any(dim=0).nonzero()
        first = int(real_columns[0]) if real_columns.numel() else mask.shape[1]
        tensors = [
            (k.index_select(0, index)[:, :, first:], v.index_select(0, index)[:, :, first:])
            for k, v in cache_tensors(self.cache)
        ]
        self.attention_mask = mask[:, first:]
        self.cache = cache_from_tensors(self.config, tensors)

    def extend_mask(self) -> torch.Tensor:
        """The attention mask for a decode step (one new real column per row); becomes the batch's mask."""
        assert self.attention_mask is not None
        ones = torch.ones(self.rows, 1, dtype=self.attention_mask.dtype, device=self.attention_mask.device)
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        return self.attention_mask

    def snapshot(self) -> Snapshot:
        assert self.cache is not None
        assert self.attention_mask is not None
        return Snapshot(cache_tensors(self.cache), self.attention_mask)

    def restore(self, snapshot: Snapshot) -> None:
        self.cache = cache_from_tensors(self.config, snapshot.tensors)
        self.attention_mask = snapshot.attention_mask

    def clear(self) -> None:
        self.cache = None
        self.attention_mask = None
