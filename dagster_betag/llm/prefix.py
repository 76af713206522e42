"""Prompts that share a prefix: compute its key/value cache once, not once per prompt.

Base-tag prompts share the system message and few-shot turns, BETag prompts the behavior
instruction; on a CPU, prefill of that shared text costs as much as decoding the answers.
A batch is laid out as ``prefix + left-padded rest``: padding sits *after* the prefix, and
position ids follow the attention mask, so every row sees the positions it would see alone.
"""

from __future__ import annotations

import copy

import torch


def split_shared_prefix(tokenizer, prompts: list[str], *, enabled: bool = True) -> tuple[list[int], list[list[int]]]:
    """Token ids of the prompts' longest common prefix, and of each prompt's rest.

    Every prompt keeps its own tokenization (the split is on token ids), so prefix + rest is
    exactly the prompt's tokens. At least one token of each prompt stays out of the prefix;
    a prefix under 8 tokens is not worth a cache and comes back empty.
    """
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if not enabled or not encoded:
        return [], encoded
    first = encoded[0]
    common = min(len(ids) for ids in encoded) - 1
    for ids in encoded[1:]:
        limit = 0
        while limit < common and ids[limit] == first[limit]:
            limit += 1
        common = limit
    if common < 8:
        return [], encoded
    return first[:common], [ids[common:] for ids in encoded]


@torch.inference_mode()
def prefix_cache(model, prefix_ids: list[int]):
    """The key/value cache of ``prefix_ids`` for one row, or None for an empty prefix."""
    if not prefix_ids:
        return None
    ids = torch.tensor([prefix_ids], device=model.device)
    return model(input_ids=ids, use_cache=True).past_key_values


def repeated_cache(cache, rows: int):
    """A copy of a one-row cache for ``rows`` rows (the shared one stays untouched)."""
    copied = copy.deepcopy(cache)
    copied.batch_repeat_interleave(rows)
    return copied


def prefixed_batch(
    prefix_ids: list[int], suffixes: list[list[int]], pad_token_id: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, Q + S) input ids and attention mask: the prefix, then each rest left-padded to S."""
    width = max(len(s) for s in suffixes)
    rows = [prefix_ids + [pad_token_id] * (width - len(s)) + list(s) for s in suffixes]
    mask = [[1] * len(prefix_ids) + [0] * (width - len(s)) + [1] * len(s) for s in suffixes]
    return torch.tensor(rows, device=device), torch.tensor(mask, device=device)
