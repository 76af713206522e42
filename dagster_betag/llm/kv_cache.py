"""A key/value cache that grows in place, for generation.

transformers' ``DynamicLayer`` appends a step's keys and values with ``torch.cat``: every
decoding step copies the whole cache, so T steps after a P-token prompt move O(T * (P + T))
tensors through memory. With the base-tag prompt (about 350 shared tokens, repeated for 64
rows) that copy was a quarter of generation time on a 2-core CPU (cProfile: 15.8 of 63.7 s in
``torch.cat``). A ``GrowingLayer`` keeps each layer's keys and values in a buffer with room
for more tokens and hands out views of its filled part; a step writes one column.

Shapes: keys and values are (rows, kv_heads, length, head_dim); the buffers are
(rows, kv_heads, capacity, head_dim) with capacity >= length.

Only inference uses it (``make_growing``): a buffer written in place has no place in a graph
that backpropagates. Operations that replace the tensors (row selection, beam reordering,
cropping) act on the buffer, so the room stays; a tensor set from outside is adopted into a
new buffer at the next update, so every operation of ``DynamicLayer`` stays correct.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

DEFAULT_ROOM = 64  # tokens of room a buffer gets beyond what it holds, unless the caller knows better


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends into spare capacity instead of concatenating."""

    key_buffer: torch.Tensor | None = None  # (rows, kv_heads, capacity, head_dim)
    value_buffer: torch.Tensor | None = None
    room: int = DEFAULT_ROOM  # spare tokens a new buffer gets: a decode's max_new_tokens allocates once per prompt

    def _owns_tensors(self) -> bool:
        """Whether ``keys``/``values`` are still views of the start of this layer's buffers (tested on
        storage and strides: under ``torch.inference_mode`` a view does not record its base)."""
        return all(
            buffer is not None
            and tensor.data_ptr() == buffer.data_ptr()
            and tensor.stride() == buffer.stride()
            and tensor.shape[:2] == buffer.shape[:2]
            for tensor, buffer in ((self.keys, self.key_buffer), (self.values, self.value_buffer))
        )

    def _reserve(self, length: int, like: torch.Tensor) -> None:
        """Buffers of at least ``length`` tokens holding the current keys and values; ``like``
        (rows, kv_heads, new, head_dim) gives the shape of a row where nothing is cached yet."""
        cached = self.get_seq_length()
        rows, heads, _, width = (self.keys if cached else like).shape
        capacity = length + self.room
        key_buffer = like.new_empty((rows, heads, capacity, width))
        value_buffer = like.new_empty((rows, heads, capacity, self.values.shape[-1] if cached else width))
        if cached:
            key_buffer[:, :, :cached] = self.keys
            value_buffer[:, :, :cached] = self.values
        self.key_buffer, self.value_buffer = key_buffer, value_buffer
        self._set_length(cached)

    def _set_length(self, length: int) -> None:
        self.keys = self.key_buffer[:, :, :length]
        self.values = self.value_buffer[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        cached, new = self.get_seq_length(), key_states.shape[-2]
        owned = cached > 0 and self._owns_tensors()
        if not owned or cached + new > self.key_buffer.shape[2] or key_states.shape[0] != self.key_buffer.shape[0]:
            self._reserve(cached + new, key_states)
        self.key_buffer[:, :, cached : cached + new] = key_states
        self.value_buffer[:, :, cached : cached + new] = value_states
        self._set_length(cached + new)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0 and self._owns_tensors():
            length = self.get_seq_length()
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self._set_length(length)
        else:
            super().batch_select_indices(indices)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.get_seq_length() > 0 and self._owns_tensors():
            length, rows = self.get_seq_length(), beam_idx.to(self.key_buffer.device)
            self.key_buffer = self.key_buffer.index_select(0, rows)
            self.value_buffer = self.value_buffer.index_select(0, rows)
            self._set_length(length)
        else:
            super().reorder_cache(beam_idx)


def make_growing(cache: Cache, room: int = DEFAULT_ROOM) -> Cache:
    """Turn the plain dynamic layers of ``cache`` into ``GrowingLayer``s with ``room`` spare
    tokens per buffer, in place; other layer kinds (sliding windows, static, quantized) stay as
    they are. Returns ``cache``.

    ``room`` = the tokens a decode will still append (its max_new_tokens) allocates each buffer
    once; a decode that goes on longer re-allocates every ``room`` tokens, still far fewer
    copies than one per step."""
    for layer in cache.layers:
        if type(layer) is DynamicLayer:
            layer.__class__ = GrowingLayer
        if isinstance(layer, GrowingLayer):
            layer.room = room
    return cache
