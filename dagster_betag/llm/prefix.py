"""Prompts that share a prefix: compute its key/value cache once, not once per prompt.

Base-tag prompts share the system message and few-shot turns, BETag prompts the behavior
instruction; on a CPU, prefill of that shared text costs as much as decoding the answers.
A batch is laid out as ``prefix + left-padded rest``: padding sits *after* the prefix, and
position ids follow the attention mask, so every row sees the positions it would see alone.
"""

from __future__ import annotations

import copy

import torch

from dagster_betag.llm.kv_cache import make_growing

MIN_SHARED_PREFIX = 8  # tokens: a shorter shared prefix is not worth a cache


def shared_prefix_length(encoded: list[list[int]], limit: int | None = None) -> int:
    """Tokens at the start of every sequence of ``encoded``, at most ``limit`` and at most all
    but one token of the shortest (each keeps a rest); 0 when under ``MIN_SHARED_PREFIX``."""
    if not encoded:
        return 0
    first = encoded[0]
    common = min(len(ids) for ids in encoded) - 1
    if limit is not None:
        common = min(common, limit)
    for ids in encoded[1:]:
        length = 0
        while length < common and ids[length] == first[length]:
            length += 1
        common = length
    return common if common >= MIN_SHARED_PREFIX else 0


def split_shared_prefix(tokenizer, prompts: list[str], *, enabled: bool = True) -> tuple[list[int], list[list[int]]]:
    """Token ids of the prompts' longest common prefix, and of each prompt's rest.

    Every prompt keeps its own tokenization (the split is on token ids), so prefix + rest is
    exactly the prompt's tokens. At least one token of each prompt stays out of the prefix;
    a prefix under ``MIN_SHARED_PREFIX`` tokens comes back empty.
    """
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    common = shared_prefix_length(encoded) if enabled else 0
    return encoded[0][:common] if common else [], [ids[common:] for ids in encoded]


@torch.inference_mode()
def prefix_cache(model, prefix_ids: list[int]):
    """The key/value cache of ``prefix_ids`` for one row, or None for an empty prefix."""
    if not prefix_ids:
        return None
    ids = torch.tensor([prefix_ids], device=model.device)
    return model(input_ids=ids, use_cache=True).past_key_values


def repeated_cache(cache, rows: int, room: int):
    """A copy of a one-row cache for ``rows`` rows (the shared one stays untouched), growing in
    place as generation appends up to ``room`` tokens to it (``llm/kv_cache.py``)."""
    copied = copy.deepcopy(cache)
    copied.batch_repeat_interleave(rows)
    return make_growing(copied, room)


def prefixed_batch(
    prefix_ids: list[int], suffixes: list[list[int]], pad_token_id: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, Q + S) input ids and attention mask: the prefix, then each rest left-padded to S."""
    width = max(len(s) for s in suffixes)
    rows = [prefix_ids + [pad_token_id] * (width - len(s)) + list(s) for s in suffixes]
    mask = [[1] * len(prefix_ids) + [0] * (width - len(s)) + [1] * len(s) for s in suffixes]
    return torch.tensor(rows, device=device), torch.tensor(mask, device=device)
