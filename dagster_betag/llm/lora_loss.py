"""The finetuning loss of one batch, computed without the work the loss does not need.

The loss of a batch is the mean cross-entropy over its answer tokens:

    L = (1 / A) * sum over answer positions (b, t) of  -log softmax(W h[b, t - 1])[y[b, t]]

with h the last hidden states, W the output projection (V rows), y the labels and A the
number of answer tokens in the batch. Three savings, each a ``LoraConfig`` switch, leave L
as it is (up to float rounding):

- **answer logits only**: W h is computed at the A answer positions, an (A, V) tensor,
  rather than at every position, a (B, T, V) one (49,152 columns for SmolLM2: at 8 x 384
  tokens, 600 MB per copy, and the backward pass holds several);
- **shared prefix**: the tokens every row of a micro-batch starts with (the behavior
  instruction, about 75 of a one-item example's 110 prompt tokens) run through the model
  once; the rows continue from that key/value cache, and gradients flow back through it;
- **micro-batches**: a batch runs in chunks of at most ``max_batch_tokens`` tokens; chunk c's
  summed loss is divided by the batch's A, so the gradients add up to the batch's.

A fourth, ``compute_dtype``, does round differently: bfloat16 matrix products (autocast),
several times faster on CPUs with bf16 dot products, with the loss in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from dagster_betag.llm.hardware import has_fast_bfloat16
from dagster_betag.llm.prefix import shared_prefix_length

IGNORE_INDEX = -100  # label of tokens that do not count in the loss
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")  # LoraConfig.compute_dtype


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]  # prompt + answer tokens
    labels: list[int]  # IGNORE_INDEX on the prompt, the token ids on the answer

    @property
    def n_answer_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    @property
    def first_answer_position(self) -> int:
        return next((t for t, label in enumerate(self.labels) if label != IGNORE_INDEX), len(self.labels))


class LossOptions(Protocol):
    """The switches of ``LoraConfig`` this module reads."""

    max_batch_tokens: int | None
    answer_logits_only: bool
    share_prompt_prefix: bool
    compute_dtype: str


def autocast_dtype(compute_dtype: str, device: str | torch.device) -> torch.dtype | None:
    """The dtype the matrix products run in under autocast, None for float32 (no autocast)."""
    if compute_dtype == "bfloat16" or (compute_dtype == "auto" and has_fast_bfloat16(device)):
        return torch.bfloat16
    return None


def batch_loss(
    model, batch: Sequence[EncodedExample], llm, options: LossOptions, *, backward_weight: float | None = None
) -> float:
    """L of ``batch`` (see the module docstring); with ``backward_weight`` w, the gradients of
    w * L are accumulated into the model's parameters on the way (one chunk at a time)."""
    n_answer = sum(example.n_answer_tokens for example in batch)
    if n_answer == 0:
        return 0.0
    total = 0.0
    for chunk in micro_batches(batch, options):
        loss_sum = _chunk_loss_sum(model, chunk, llm, options)
        if backward_weight is not None:
            (loss_sum * (backward_weight / n_answer)).backward()
        total += loss_sum.item()
    return total / n_answer


def micro_batches(batch: Sequence[EncodedExample], options: LossOptions) -> list[list[EncodedExample]]:
    """Consecutive runs of the batch's rows with rows x longest row <= max_batch_tokens (one
    row at least): batches are length-grouped, so a chunk pads little."""
    if options.max_batch_tokens is None:
        return [list(batch)]
    chunks: list[list[EncodedExample]] = []
    current: list[EncodedExample] = []
    width = 0  # the longest row of ``current``
    for example in batch:
        widened = max(width, len(example.input_ids))
        if current and widened * (len(current) + 1) > options.max_batch_tokens:
            chunks.append(current)
            current, widened = [], len(example.input_ids)
        current.append(example)
        width = widened
    return [*chunks, current] if current else chunks


def _chunk_loss_sum(model, chunk: Sequence[EncodedExample], llm, options: LossOptions) -> torch.Tensor:
    """The summed answer-token cross-entropy of one micro-batch, as a differentiable scalar."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps it
    decoder = causal_lm.get_decoder()
    device = llm.device
    # the prefix ends before each row's last prompt token: that token's hidden state predicts
    # the first answer token, so it must be computed in the row
    limit = min(example.first_answer_position for example in chunk) - 1
    shared = shared_prefix_length([e.input_ids for e in chunk], limit) if options.share_prompt_prefix else 0
    rests = [e.input_ids[shared:] for e in chunk]
    width = max(len(rest) for rest in rests)
    pad = llm.tokenizer.pad_token_id
    # right-padded: the padding comes after every real token, so positions are the row's own
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rests], device=device)  # (C, S)
    labels = torch.tensor(
        [e.labels[shared:] + [IGNORE_INDEX] * (width - len(e.labels) + shared) for e in chunk], device=device
    )  # (C, S)
    mask = torch.tensor([[1] * (shared + len(r)) + [0] * (width - len(r)) for r in rests], device=device)  # (C, P+S)
    fast_dtype = autocast_dtype(options.compute_dtype, device)
    with torch.autocast(torch.device(device).type, dtype=fast_dtype or torch.float32, enabled=fast_dtype is not None):
        cache = None
        if shared:
            prefix = torch.tensor([chunk[0].input_ids[:shared]], device=device)  # (1, P)
            cache = decoder(input_ids=prefix, use_cache=True).past_key_values
            cache.batch_repeat_interleave(len(chunk))  # (C, heads, P, head dim) per layer, still in the graph
        hidden = decoder(input_ids=input_ids, attention_mask=mask, past_key_values=cache).last_hidden_state  # (C, S, H)
        targets = labels[:, 1:]  # (C, S-1): position t's hidden state predicts token t + 1
        hidden = hidden[:, :-1]
        if options.answer_logits_only:
            keep = targets != IGNORE_INDEX  # (C, S-1)
            hidden, targets = hidden[keep], targets[keep]  # (A_c, H), (A_c,)
        logits = _output_logits(causal_lm, hidden).float()  # (A_c, V) or (C, S-1, V)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def _output_logits(causal_lm, hidden: torch.Tensor) -> torch.Tensor:
    """The model's output head on hidden states, with its logit soft-capping where it has one (Gemma 2)."""
    logits = causal_lm.get_output_embeddings()(hidden)
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits
