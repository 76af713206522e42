"""The base tagger: what the pipeline needs from whatever writes base tags (library code, no Dagster).

Two implement it: ``model.LoadedLLM`` (a local model, greedy decoding under the logits rules)
and ``api.ApiTagger`` (a model behind an OpenAI-compatible API). ``name``, ``fingerprint``
and ``precision`` key the shards the tags are written to, so tags of one model are never
mixed with another's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotations only: this module stays importable without torch
    from dagster_betag.llm.base_tags import BaseTagConfig, FewShot
    from dagster_betag.llm.prompts import ItemDescription


class Tagger(Protocol):
    name: str  # the model's name
    fingerprint: str  # a stable hash of the weights' source (or of the API endpoint and model)

    @property
    def precision(self) -> str:
        """What the outputs were decoded in (``float32``, ``bfloat16``; ``api`` for a remote model)."""
        ...

    def generate_base_tags(
        self,
        items: Sequence[ItemDescription],
        config: BaseTagConfig,
        *,
        few_shot: FewShot = ...,
        on_batch: Callable[[int], None] | None = None,
        catalog_values: Mapping[str, Iterable[str]] | None = None,
    ) -> list[list[str]]:
        """Each item's base tags (at most ``config.num_tags``), in the order of ``items``;
        ``on_batch(n)`` after each n items done."""
        ...
