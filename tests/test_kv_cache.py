"""The in-place key/value cache: the same states as transformers' DynamicLayer through every
operation generation uses, no copy per step, and the same tokens out of real generation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from dagster_betag.llm import decoding, greedy, prefix
from dagster_betag.llm.base_tags import BaseTagConfig, generate_base_tag_texts
from dagster_betag.llm.betag import BetagConfig, generate_betags
from dagster_betag.llm.decoding import DiverseBeamConfig
from dagster_betag.llm.kv_cache import GrowingLayer, make_growing
from dagster_betag.llm.prompts import ItemDescription


def _states(rows: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (rows, 3, length, 8)  # (rows, kv_heads, length, head_dim)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def _same(a: DynamicLayer, b: DynamicLayer) -> None:
    assert a.get_seq_length() == b.get_seq_length()
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


@pytest.mark.parametrize("inference", [False, True])
def test_every_operation_leaves_the_states_of_a_dynamic_layer(inference):
    with torch.inference_mode(inference):
        plain, growing = DynamicLayer(), GrowingLayer()
        steps = [
            ("update", _states(4, 5, 0)),
            ("update", _states(4, 1, 1)),
            ("select", torch.tensor([3, 0, 2])),
            ("update", _states(3, 1, 2)),
            ("reorder", torch.tensor([2, 2, 0, 1])),
            ("update", _states(4, 1, 3)),
            ("crop", -2),
            ("update", _states(4, 2, 4)),
            ("repeat", 2),
            ("update", _states(8, 1, 5)),
        ]
        for operation, argument in steps:
            for layer in (plain, growing):
                if operation == "update":
                    returned = layer.update(*argument)
                    assert torch.equal(returned[0], layer.keys)
                elif operation == "select":
                    layer.batch_select_indices(argument)
                elif operation == "reorder":
                    layer.reorder_cache(argument)
                elif operation == "crop":
                    layer.crop(argument)
                else:
                    layer.batch_repeat_interleave(argument)
            _same(plain, growing)


def test_a_step_writes_into_the_buffer_instead_of_copying_the_cache():
    layer = GrowingLayer()
    with torch.inference_mode():
        layer.update(*_states(2, 40, 0))
        storage = layer.keys.data_ptr()
        for step in range(8):  # within the headroom of a 40-token buffer
            layer.update(*_states(2, 1, step + 1))
            assert layer.keys.data_ptr() == storage
        assert layer.get_seq_length() == 48


def test_make_growing_converts_only_plain_dynamic_layers_and_sets_their_room():
    cache = DynamicCache()
    cache.update(*_states(1, 3, 0), layer_idx=0)
    cache.layers.append(_Sliding())
    make_growing(cache, room=5)
    assert type(cache.layers[0]) is GrowingLayer and type(cache.layers[1]) is _Sliding
    cache.update(*_states(1, 2, 1), layer_idx=0)
    assert cache.layers[0].key_buffer.shape[2] == 3 + 2 + 5


class _Sliding(DynamicLayer):
    """Stands for any layer kind other than the plain dynamic one."""


@pytest.fixture
def plain_caches(monkeypatch):
    """Generation with transformers' own concatenating cache, for comparison."""

    def use(plain: bool) -> None:
        for module in (prefix, greedy, decoding):
            monkeypatch.setattr(module, "make_growing", (lambda cache, room: cache) if plain else make_growing)

    return use


ITEMS = [
    ItemDescription("1", "Toy Story", None, {"genre": ["Animation", "Comedy"]}),
    ItemDescription("2", "Heat", "A heist goes wrong in Los Angeles.", {"genre": ["Crime"]}),
    ItemDescription("3", "Amélie", None, {"genre": ["Romance"]}),
]


@pytest.mark.parametrize("share_prompt_prefix", [True, False])
def test_base_tags_are_the_same_tokens_as_with_a_concatenating_cache(tiny_llm, plain_caches, share_prompt_prefix):
    """Rows leave the batch as they finish (row selection on the cache), with and without a shared prefix."""
    config = BaseTagConfig(
        num_tags=3, max_new_tokens=16, lowercase_only=False, batch_size=3, share_prompt_prefix=share_prompt_prefix,
        drop_finished_every=2,
    )  # fmt: skip
    plain_caches(True)
    expected = generate_base_tag_texts(tiny_llm, ITEMS, config)
    plain_caches(False)
    assert generate_base_tag_texts(tiny_llm, ITEMS, config) == expected


@pytest.mark.parametrize("beams_per_group", [1, 2])
def test_betags_are_the_same_tokens_as_with_a_concatenating_cache(tiny_llm, plain_caches, beams_per_group):
    """Two beams per group reorder the cache at every step; groups that finish leave it."""
    items = [("1", ["space opera", "rebellion"]), ("2", ["heist"]), ("3", ["coming of age", "summer"])]
    decode = DiverseBeamConfig(num_groups=3, beams_per_group=beams_per_group, max_new_tokens=12)
    config = BetagConfig(decoding=decode, batch_rows=3 * decode.num_groups * beams_per_group)
    plain_caches(True)
    expected = [result.beam_texts for result in generate_betags(tiny_llm, items, config)]
    plain_caches(False)
    assert [result.beam_texts for result in generate_betags(tiny_llm, items, config)] == expected
    contrastive = dataclasses.replace(config, decoding=dataclasses.replace(decode, contrastive_alpha=0.5))
    plain_caches(True)
    expected = [result.beam_texts for result in generate_betags(tiny_llm, items, contrastive)]
    plain_caches(False)
    assert [result.beam_texts for result in generate_betags(tiny_llm, items, contrastive)] == expected
