"""Tiny random-weight Llamas built from a config, for tests that need a real architecture
(cache, attention mask, generate()) at milliseconds per step, with nothing from a model hub.

One builder, so that the tests differ only in what they choose (vocabulary, width, weight
scale, tied embeddings, seed) and not in hand-copied configs.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(
    tokenizer=None,
    *,
    vocab_size: int = 64,
    hidden_size: int = 32,
    max_positions: int = 1024,
    init_std: float = 0.02,
    tied: bool = False,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A random 2-layer Llama (4 heads, 2 key/value heads), in eval mode.

    With a ``tokenizer``: its vocabulary and special token ids (the pad token's embedding row
    starts at zero); without: ``vocab_size`` ids and Llama's default special ids. Tied
    embeddings with small weights echo their last token; untied with large weights
    (``init_std`` 0.3 and up) the answers depend on the prompt.
    """
    special_ids = {}
    if tokenizer is not None:
        vocab_size = len(tokenizer)
        special_ids = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tied,
        initializer_range=init_std,
        **special_ids,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()
